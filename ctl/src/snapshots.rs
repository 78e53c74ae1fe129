//! The `snapshots` verbs, run against the daemon over gRPC.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use strata_snapshotter::grpc::RemoteSnapshotter;
use strata_snapshotter::{Error, Labels, Snapshotter};

use crate::cli::{CreateArgs, GlobalArgs, SnapshotsCommand};
use crate::mountcmd::mount_commands;
use crate::output;

/// A client error as `MESSAGE (Kind)`.
fn describe(err: &Error) -> String {
    format!("{} ({:?})", err.message(), err.kind())
}

/// A daemon error as one line: what was being done, the message, the kind.
fn failed(what: impl std::fmt::Display, err: Error) -> anyhow::Error {
    anyhow!("{what}: {}", describe(&err))
}

/// Parses `KEY=VALUE` pairs; the value may be empty, the key may not.
pub fn parse_labels(pairs: &[String]) -> Result<Labels> {
    let mut labels = Labels::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').with_context(|| format!("label {pair:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            bail!("label {pair:?} has an empty key");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("encode JSON")?);
    Ok(())
}

pub async fn run(global: &GlobalArgs, command: SnapshotsCommand) -> Result<()> {
    let snapshotter = RemoteSnapshotter::connect(&global.address, &global.snapshotter)
        .await
        // The client's message already names the socket.
        .map_err(|e| anyhow!(describe(&e)))?;
    let s = &snapshotter;
    match command {
        SnapshotsCommand::Ls { filters } => {
            let infos = s.list(&filters).await.map_err(|e| failed("list", e))?;
            if global.json {
                print_json(&Value::Array(infos.iter().map(output::info_json).collect()))?;
            } else {
                print!("{}", output::list_table(&infos));
            }
        }
        SnapshotsCommand::Tree => {
            let infos = s.list(&[]).await.map_err(|e| failed("list", e))?;
            if global.json {
                print_json(&tree_json(&infos))?;
            } else {
                print!("{}", output::tree(&infos));
            }
        }
        SnapshotsCommand::Info { key } => {
            let info = s.stat(&key).await.map_err(|e| failed(format!("stat {key:?}"), e))?;
            if global.json {
                print_json(&output::info_json(&info))?;
            } else {
                print!("{}", output::info_text(&info));
            }
        }
        SnapshotsCommand::Usage { keys } => {
            let keys = if keys.is_empty() {
                s.list(&[]).await.map_err(|e| failed("list", e))?.into_iter().map(|i| i.name).collect()
            } else {
                keys
            };
            let mut rows = Vec::new();
            for key in keys {
                let usage = s.usage(&key).await.map_err(|e| failed(format!("usage {key:?}"), e))?;
                rows.push((key, usage));
            }
            if global.json {
                print_json(&Value::Array(rows.iter().map(|(k, u)| output::usage_json(k, *u)).collect()))?;
            } else {
                let rows: Vec<Vec<String>> = rows
                    .into_iter()
                    .map(|(k, u)| vec![k, output::human_size(u.size), u.inodes.to_string()])
                    .collect();
                print!("{}", output::table(&["KEY", "SIZE", "INODES"], &rows));
            }
        }
        SnapshotsCommand::Prepare(args) => create(s, global, args, false).await?,
        SnapshotsCommand::View(args) => create(s, global, args, true).await?,
        SnapshotsCommand::Commit { name, key, labels } => {
            let labels = parse_labels(&labels)?;
            s.commit(&name, &key, labels).await.map_err(|e| failed(format!("commit {key:?} as {name:?}"), e))?;
            if global.json {
                print_json(&json!({ "name": name }))?;
            }
        }
        SnapshotsCommand::Rm { keys } => {
            for key in &keys {
                s.remove(key).await.map_err(|e| failed(format!("remove {key:?}"), e))?;
            }
            if global.json {
                print_json(&json!({ "removed": keys }))?;
            }
        }
        SnapshotsCommand::Mounts { key, target } => {
            let mounts = s.mounts(&key).await.map_err(|e| failed(format!("mounts {key:?}"), e))?;
            if global.json {
                print_json(&output::mounts_json(&mounts))?;
            } else {
                let target = std::path::absolute(&target)
                    .with_context(|| format!("resolve target {}", target.display()))?;
                for cmd in mount_commands(&mounts, &target) {
                    println!("{cmd}");
                }
            }
        }
        SnapshotsCommand::Label { key, labels } => {
            let labels = parse_labels(&labels)?;
            let mut info = s.stat(&key).await.map_err(|e| failed(format!("stat {key:?}"), e))?;
            if !labels.is_empty() {
                let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
                info.labels = labels;
                info = s.update(info, &paths).await.map_err(|e| failed(format!("label {key:?}"), e))?;
            }
            if global.json {
                print_json(&json!(info.labels))?;
            } else {
                for (k, v) in &info.labels {
                    println!("{k}={v}");
                }
            }
        }
        SnapshotsCommand::Cleanup => {
            s.cleanup().await.map_err(|e| failed("cleanup", e))?;
        }
    }
    Ok(())
}

async fn create(s: &RemoteSnapshotter, global: &GlobalArgs, args: CreateArgs, view: bool) -> Result<()> {
    let labels = parse_labels(&args.labels)?;
    let (verb, result) = if view {
        ("view", s.view(&args.key, &args.parent, labels).await)
    } else {
        ("prepare", s.prepare(&args.key, &args.parent, labels).await)
    };
    let mounts = result.map_err(|e| failed(format!("{verb} {:?}", args.key), e))?;
    if global.json {
        print_json(&json!({ "key": args.key, "mounts": mounts }))?;
    } else if args.mounts {
        match &args.target {
            Some(target) => {
                let target = std::path::absolute(target)
                    .with_context(|| format!("resolve target {}", target.display()))?;
                for cmd in mount_commands(&mounts, &target) {
                    println!("{cmd}");
                }
            }
            None => {
                for m in &mounts {
                    println!("{} {} {}", m.fstype, m.source, m.options.join(","));
                }
            }
        }
    }
    Ok(())
}

/// The tree as nested JSON: `[{"name", "kind", "children": [...]}]`.
fn tree_json(infos: &[strata_snapshotter::Info]) -> Value {
    use std::collections::{BTreeMap, BTreeSet};
    let names: BTreeSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&strata_snapshotter::Info>> = BTreeMap::new();
    let mut roots = Vec::new();
    for info in infos {
        if info.parent.is_empty() || !names.contains(info.parent.as_str()) {
            roots.push(info);
        } else {
            children.entry(&info.parent).or_default().push(info);
        }
    }
    fn node(info: &strata_snapshotter::Info, children: &BTreeMap<&str, Vec<&strata_snapshotter::Info>>, depth: usize) -> Value {
        let mut kids: Vec<&strata_snapshotter::Info> = children.get(info.name.as_str()).cloned().unwrap_or_default();
        kids.sort_by(|a, b| a.name.cmp(&b.name));
        // Parents form a tree; the depth bound only guards against a corrupt reply.
        let kids: Vec<Value> = if depth > 10_000 { Vec::new() } else { kids.iter().map(|k| node(k, children, depth + 1)).collect() };
        json!({ "name": info.name, "kind": info.kind.as_str(), "children": kids })
    }
    roots.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(roots.iter().map(|r| node(r, &children, 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_empty_values_and_reject_bad_pairs() {
        let labels = parse_labels(&["a=1".into(), "b=".into(), "c=x=y".into()]).expect("valid");
        assert_eq!(labels.get("a").map(String::as_str), Some("1"));
        assert_eq!(labels.get("b").map(String::as_str), Some(""));
        assert_eq!(labels.get("c").map(String::as_str), Some("x=y"));
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
    }
}
