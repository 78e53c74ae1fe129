//! Text and JSON rendering: tables, the parent tree, human sizes and
//! timestamps.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use strata_snapshotter::{Info, Mount, Usage};

/// Bytes in units of 1024, one decimal: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes.unsigned_abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-25T14:46:03.123456789Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn info_json(info: &Info) -> Value {
    json!({
        "name": info.name,
        "parent": info.parent,
        "kind": info.kind.as_str(),
        "created": rfc3339(info.created),
        "updated": rfc3339(info.updated),
        "labels": info.labels,
    })
}

pub fn usage_json(key: &str, usage: Usage) -> Value {
    json!({ "key": key, "size": usage.size, "inodes": usage.inodes })
}

pub fn mounts_json(mounts: &[Mount]) -> Value {
    json!(mounts)
}

/// Left-aligned columns separated by two spaces, like `ctr`'s tabwriter.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i < last {
                text.push_str(&" ".repeat(widths[i] - cell.len() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The `ls` table: KEY, PARENT, KIND.
pub fn list_table(infos: &[Info]) -> String {
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|i| vec![i.name.clone(), i.parent.clone(), i.kind.to_string()])
        .collect();
    table(&["KEY", "PARENT", "KIND"], &rows)
}

/// The parent tree: roots (no parent, or a parent not listed) first, each
/// child under its parent behind ` \_ `, siblings in name order.
pub fn tree(infos: &[Info]) -> String {
    let names: std::collections::BTreeSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots: Vec<&str> = Vec::new();
    for info in infos {
        if info.parent.is_empty() || !names.contains(info.parent.as_str()) {
            roots.push(&info.name);
        } else {
            children.entry(&info.parent).or_default().push(&info.name);
        }
    }
    roots.sort_unstable();
    for list in children.values_mut() {
        list.sort_unstable();
    }
    let mut out = String::new();
    // Iterative depth-first walk: parents form a tree, but stay safe anyway.
    let mut stack: Vec<(&str, usize)> = roots.iter().rev().map(|r| (*r, 0)).collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some((name, depth)) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        if depth == 0 {
            out.push_str(name);
        } else {
            out.push_str(&" ".repeat(3 * (depth - 1) + 1));
            out.push_str("\\_ ");
            out.push_str(name);
        }
        out.push('\n');
        if let Some(kids) = children.get(name) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    out
}

/// `info` as text: one `Field: value` line each, labels indented.
pub fn info_text(info: &Info) -> String {
    let mut out = format!(
        "Name:    {}\nParent:  {}\nKind:    {}\nCreated: {}\nUpdated: {}\nLabels:\n",
        info.name,
        info.parent,
        info.kind,
        rfc3339(info.created),
        rfc3339(info.updated)
    );
    for (k, v) in &info.labels {
        out.push_str(&format!("  {k}={v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strata_snapshotter::Kind;

    fn info(name: &str, parent: &str, kind: Kind) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            created: UNIX_EPOCH,
            updated: UNIX_EPOCH,
            labels: Default::default(),
        }
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_650_363, 5);
        assert_eq!(rfc3339(t), "2026-11-25T23:46:03.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn tree_nests_children_under_parents() {
        let infos = vec![
            info("c1", "b", Kind::Active),
            info("a", "", Kind::Committed),
            info("b", "a", Kind::Committed),
            info("v", "a", Kind::View),
            info("lone", "", Kind::Active),
        ];
        assert_eq!(tree(&infos), "a\n \\_ b\n    \\_ c1\n \\_ v\nlone\n");
    }

    #[test]
    fn table_aligns_columns() {
        let out = list_table(&[info("abc", "", Kind::Committed), info("d", "abc", Kind::Active)]);
        assert_eq!(out, "KEY  PARENT  KIND\nabc          Committed\nd    abc     Active\n");
    }
}
