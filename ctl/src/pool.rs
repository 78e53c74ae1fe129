//! `stratactl pool`: inspects a blockcow pool by reading its files directly.
//! Both verbs look at the last committed generation, so they also work while
//! a daemon has the pool open; `check --repair` needs it closed.

use std::path::PathBuf;

use anyhow::{bail, Context};
use strata_drivers::blockcow::{self, CheckReport, PoolInfo};

/// Arguments of `stratactl pool`.
#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    /// Pool directory, the one holding the `data` and `metadata` files.
    #[arg(long, global = true, default_value = "/var/lib/strata/snapshotter/blockcow/pool")]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: PoolCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PoolCommand {
    /// Show space, settings and devices of the pool.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Walk every tree, recompute every reference count and report leaks and
    /// corruption; exits non-zero on any finding.
    Check {
        /// Fix leaked space (refcounts higher than the references found) by
        /// writing a new generation. Corruption is never "repaired".
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `pool` verb.
pub fn run(args: PoolArgs) -> anyhow::Result<()> {
    let root = &args.root;
    if !root.join(blockcow::METADATA_FILE).is_file() {
        bail!("no blockcow pool at {} (missing {})", root.display(), blockcow::METADATA_FILE);
    }
    match args.command {
        PoolCommand::Info { json } => {
            let info = blockcow::info(root).with_context(|| format!("read pool {}", root.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", render_info(&info));
            }
            Ok(())
        }
        PoolCommand::Check { repair, json } => {
            let report = if repair {
                blockcow::repair(root).with_context(|| format!("repair pool {}", root.display()))?
            } else {
                blockcow::check(root).with_context(|| format!("check pool {}", root.display()))?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_report(&report));
            }
            if report.is_clean() {
                return Ok(());
            }
            if repair && report.corruption.is_empty() {
                let after = blockcow::check(root).with_context(|| format!("check pool {}", root.display()))?;
                if after.is_clean() {
                    println!("repaired {} leak(s); generation {}", report.leaks.len(), after.generation);
                    return Ok(());
                }
                bail!("pool still has findings after repair:\n{after}");
            }
            bail!("{} corruption finding(s), {} leak(s)", report.corruption.len(), report.leaks.len())
        }
    }
}

/// Decimal sizes, the way `docker info` prints devicemapper space.
fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string() + " " + units[u]
    }
}

fn render_info(info: &PoolInfo) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k}: {v}\n"));
    line("Pool Name", info.pool_name.clone());
    line("Pool Blocksize", human(info.block_size));
    line("Base Device Size", human(info.base_device_size));
    line("Backing Filesystem", info.backing_filesystem.clone());
    line("Data file", info.data_file.display().to_string());
    line("Metadata file", info.metadata_file.display().to_string());
    line("Data Space Used", human(info.data_space_used));
    line("Data Space Total", human(info.data_space_total));
    line("Data Space Available", human(info.data_space_available));
    line("Metadata Space Used", human(info.metadata_space_used));
    line("Metadata Space Total", human(info.metadata_space_total));
    line("Metadata Space Available", human(info.metadata_space_available));
    line("Thin Pool Minimum Free Space", format!("{}%", info.min_free_space_pct));
    line("Transaction Id", info.transaction_id.to_string());
    line("Generation", info.generation.to_string());
    out.push_str(&format!("Devices: {}\n", info.devices.len()));
    if !info.devices.is_empty() {
        out.push_str(&format!("  {:>6} {:>6} {:>12} {:>10} {:>10}\n", "ID", "ORIGIN", "SIZE", "MAPPED", "EXCLUSIVE"));
        for d in &info.devices {
            let origin = if d.origin == 0 { "-".to_string() } else { d.origin.to_string() };
            out.push_str(&format!(
                "  {:>6} {:>6} {:>12} {:>10} {:>10}\n",
                d.id,
                origin,
                human(d.virtual_size),
                d.mapped_blocks,
                d.exclusive_blocks
            ));
        }
    }
    out
}

fn render_report(report: &CheckReport) -> String {
    let mut out = report.to_string();
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(if report.is_clean() { "clean\n" } else { "FINDINGS\n" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use strata_drivers::blockcow::{Pool, PoolConfig};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        pool: PoolArgs,
    }

    fn small_pool(root: &std::path::Path) -> Pool {
        let config = PoolConfig { data_size: 64 << 20, metadata_size: 8 << 20, ..PoolConfig::default() };
        Pool::create(root, &config).unwrap()
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from(["x", "check", "--repair", "--root", "/p"]).unwrap();
        assert_eq!(cli.pool.root, PathBuf::from("/p"));
        assert!(matches!(cli.pool.command, PoolCommand::Check { repair: true, json: false }));
        assert!(Cli::try_parse_from(["x", "frobnicate"]).is_err());
    }

    #[test]
    fn info_and_check_on_a_live_pool() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pool");
        let mut pool = small_pool(&root);
        let dev = pool.create_device(1 << 20).unwrap();
        pool.write(dev, 0, b"data").unwrap();
        pool.snapshot(dev).unwrap();
        let args = |command| PoolArgs { root: root.clone(), command };
        run(args(PoolCommand::Info { json: false })).unwrap();
        run(args(PoolCommand::Check { repair: false, json: true })).unwrap();
        let info = blockcow::info(&root).unwrap();
        assert_eq!(info, pool.info().unwrap());
        let text = render_info(&info);
        assert!(text.contains("Pool Blocksize: 65.536 kB"), "{text}");
        assert!(text.contains("Data Space Used: 65.536 kB"), "{text}");
        // Repair needs the pool closed.
        assert!(run(args(PoolCommand::Check { repair: true, json: false })).is_err());
        drop(pool);
        run(args(PoolCommand::Check { repair: true, json: false })).unwrap();
    }

    #[test]
    fn missing_pool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(PoolArgs { root: dir.path().into(), command: PoolCommand::Info { json: false } }).unwrap_err();
        assert!(err.to_string().contains("no blockcow pool"), "{err}");
    }

    #[test]
    fn corruption_gives_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pool");
        let mut pool = small_pool(&root);
        let dev = pool.create_device(1 << 20).unwrap();
        pool.write(dev, 0, b"data").unwrap();
        pool.commit().unwrap();
        drop(pool);
        assert!(blockcow::check(&root).unwrap().is_clean());
        // Wipe the node area: every tree node and device record.
        use std::os::unix::fs::FileExt;
        use strata_drivers::blockcow::page::{self, PageType, Superblock, PAGE_SIZE};
        let meta = std::fs::OpenOptions::new().read(true).write(true).open(root.join("metadata")).unwrap();
        let mut buf = vec![0u8; PAGE_SIZE];
        let sb = (0..2u64)
            .filter_map(|slot| {
                meta.read_exact_at(&mut buf, slot * PAGE_SIZE as u64).unwrap();
                let g = page::verify(&buf, PageType::Superblock, slot).ok()?;
                Superblock::decode(&buf, g).ok()
            })
            .max_by_key(|sb| sb.generation)
            .unwrap();
        let start = sb.node_start * PAGE_SIZE as u64;
        meta.write_all_at(&vec![0u8; (sb.meta_pages * PAGE_SIZE as u64 - start) as usize], start).unwrap();
        let err = run(PoolArgs { root: root.clone(), command: PoolCommand::Check { repair: false, json: false } });
        assert!(err.is_err());
    }
}
