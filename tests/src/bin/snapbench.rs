//! snapbench: drives any containerd snapshots gRPC endpoint with the same
//! code, so strata-snapshotd and containerd's own snapshotters can be
//! measured side by side.
//!
//! Workloads (all by default, or pick with `--workload`):
//! - `cycles`: Prepare + Commit + Remove cycles per second, with 1 and with
//!   8 concurrent clients (one connection each), for `--seconds` per round.
//! - `benchsuite`: containerd's benchsuite workload: 16 layers, each applying
//!   10 operations to 1 MiB files `/a`…`/j` (create random, overwrite 4 bytes
//!   mid-file, remove) in the mounted prepared snapshot; prepare, write
//!   (mount + apply + unmount) and commit are timed separately.
//! - `prepare`: Prepare of an active snapshot on a committed busybox-sized
//!   parent (about 1 MiB in ~400 entries), each followed by an untimed Remove.
//!
//! Each workload runs `--rounds` times; the medians are printed as text and,
//! with `--json FILE`, written as JSON.
//!
//! Talking to containerd's main socket needs `--namespace NS` (sent as the
//! `containerd-namespace` header); strata-snapshotd ignores it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use rand::RngCore;
use serde_json::{json, Value};
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_proto::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest};
use strata_snapshotter::mount::TempMount;
use strata_snapshotter::Mount;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Benchmark a containerd snapshots gRPC endpoint.
#[derive(Debug, Parser)]
#[command(name = "snapbench")]
struct Args {
    /// Endpoint: unix:///path.sock or a bare socket path.
    #[arg(long, required_unless_present = "report")]
    address: Option<String>,
    /// The `snapshotter` field of every request (overlay, vfs, overlayfs, native, ...).
    #[arg(long, required_unless_present = "report")]
    snapshotter: Option<String>,
    /// containerd namespace sent as the `containerd-namespace` header (needed
    /// on containerd's own socket).
    #[arg(long)]
    namespace: Option<String>,
    /// Which workloads to run (repeatable); default all.
    #[arg(long = "workload", value_enum)]
    workloads: Vec<Workload>,
    /// Seconds per round of the cycles workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of each workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Prepares per round of the `prepare` workload.
    #[arg(long, default_value_t = 50)]
    prepares: usize,
    /// A name for this run in the output (default: the snapshotter).
    #[arg(long)]
    label: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of measuring, print a Markdown comparison of earlier `--json`
    /// results (labels `strata-overlay`, `strata-vfs`, `containerd-overlayfs`
    /// and `containerd-native` get the goal ratios).
    #[arg(long, num_args = 1.., value_name = "JSON", conflicts_with_all = ["address", "snapshotter"])]
    report: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Cycles,
    Benchsuite,
    Prepare,
}

/// One connection plus what every request carries.
#[derive(Clone)]
struct Client {
    inner: SnapshotsClient<Channel>,
    snapshotter: String,
    namespace: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    async fn connect(args: &Args) -> Result<Client> {
        let address = args.address.as_deref().context("--address is required")?;
        let channel = strata_snapshotter::grpc::client::connect_channel(address)
            .await
            .with_context(|| format!("connect to {address}"))?;
        let namespace = match &args.namespace {
            Some(ns) => Some(ns.parse().with_context(|| format!("namespace {ns:?} is not a valid header value"))?),
            None => None,
        };
        Ok(Client {
            inner: SnapshotsClient::new(channel).max_decoding_message_size(16 << 20),
            snapshotter: args.snapshotter.clone().context("--snapshotter is required")?,
            namespace,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(ns) = &self.namespace {
            req.metadata_mut().insert("containerd-namespace", ns.clone());
        }
        req
    }

    async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let req = self.request(PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: gc_root(),
        });
        let resp = self.inner.prepare(req).await.with_context(|| format!("prepare {key}"))?;
        Ok(resp
            .into_inner()
            .mounts
            .into_iter()
            .map(|m| Mount { fstype: m.r#type, source: m.source, target: m.target, options: m.options })
            .collect())
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<()> {
        let req = self.request(CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_string(),
            key: key.to_string(),
            labels: gc_root(),
            parent: String::new(),
        });
        self.inner.commit(req).await.with_context(|| format!("commit {key} as {name}"))?;
        Ok(())
    }

    async fn remove(&mut self, key: &str) -> Result<()> {
        let req = self.request(RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() });
        self.inner.remove(req).await.with_context(|| format!("remove {key}"))?;
        Ok(())
    }
}

/// containerd garbage-collects snapshots that nothing references, also
/// between a client's Prepare and its Commit; its clients hold a lease or set
/// this label. Every endpoint gets the same label, so the work is the same.
fn gc_root() -> std::collections::HashMap<String, String> {
    [("containerd.io/gc.root".to_string(), "snapbench".to_string())].into_iter().collect()
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A prefix unique to this run, so keys never collide with earlier runs.
fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("snapbench-{}-{nanos}", std::process::id())
}

/// Workload (a): Prepare + Commit + Remove for `secs` seconds with `clients`
/// concurrent connections. Returns (cycles per second, median cycle ms).
async fn cycles_round(args: &Args, clients: usize, secs: u64, prefix: &str) -> Result<(f64, f64)> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Client::connect(args).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in conns.into_iter().enumerate() {
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("{prefix}-c{c}-{i}-active");
                let name = format!("{prefix}-c{c}-{i}");
                let t = Instant::now();
                client.prepare(&key, "").await?;
                client.commit(&name, &key).await?;
                client.remove(&name).await?;
                lat.push(ms(t.elapsed()));
                i += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("client task panicked")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((all.len() as f64 / elapsed, median(&all)))
}

async fn cycles(args: &Args, prefix: &str) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for clients in [1usize, 8] {
        let mut rates = Vec::new();
        let mut lats = Vec::new();
        for r in 0..args.rounds {
            let (rate, lat) = cycles_round(args, clients, args.seconds, &format!("{prefix}-cyc{clients}-r{r}")).await?;
            rates.push(rate);
            lats.push(lat);
        }
        out.insert(
            format!("clients_{clients}"),
            json!({
                "cycles_per_sec": median(&rates),
                "cycle_ms": median(&lats),
                "rounds_cycles_per_sec": rates,
            }),
        );
    }
    Ok(Value::Object(out))
}

const FILES: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
const MIB: usize = 1 << 20;
const LAYERS: usize = 16;

/// The operation layer `layer` applies to file `f`: the first layer creates
/// every file; later layers rotate create, 4-byte update and remove.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Update,
    Remove,
}

fn op_for(layer: usize, f: usize) -> Op {
    if layer == 0 {
        return Op::Create;
    }
    match (layer + f) % 3 {
        0 => Op::Create,
        1 => Op::Update,
        _ => Op::Remove,
    }
}

/// Applies one layer's 10 operations under `root`; returns bytes written.
fn apply_layer(root: &std::path::Path, layer: usize, pool: &[Vec<u8>]) -> Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut written = 0u64;
    for (f, name) in FILES.iter().enumerate() {
        let path = root.join(name);
        let exists = path.exists();
        let op = match op_for(layer, f) {
            Op::Update | Op::Remove if !exists => Op::Create,
            op => op,
        };
        match op {
            Op::Create => {
                let data = &pool[(layer * FILES.len() + f) % pool.len()];
                std::fs::write(&path, data).with_context(|| format!("create {}", path.display()))?;
                written += data.len() as u64;
            }
            Op::Update => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                file.seek(SeekFrom::Start((MIB / 2) as u64))?;
                file.write_all(&[layer as u8, f as u8, 0xA5, 0x5A]).with_context(|| format!("update {}", path.display()))?;
                written += 4;
            }
            Op::Remove => std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?,
        }
    }
    Ok(written)
}

/// Workload (b), one round: returns (prepare, write, commit, total) ms and MiB written.
async fn benchsuite_round(client: &mut Client, prefix: &str, pool: Arc<Vec<Vec<u8>>>) -> Result<[f64; 5]> {
    let (mut prep, mut write, mut commit) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut bytes = 0u64;
    let mut parent = String::new();
    let mut committed = Vec::new();
    let start = Instant::now();
    for layer in 0..LAYERS {
        let key = format!("{prefix}-l{layer}-active");
        let name = format!("{prefix}-l{layer}");
        let t = Instant::now();
        let mounts = client.prepare(&key, &parent).await?;
        prep += t.elapsed();

        let t = Instant::now();
        let pool = pool.clone();
        bytes += tokio::task::spawn_blocking(move || -> Result<u64> {
            let m = TempMount::new(&mounts).with_context(|| format!("mount {mounts:?}"))?;
            let n = apply_layer(m.path(), layer, &pool)?;
            m.unmount().context("unmount the layer")?;
            Ok(n)
        })
        .await
        .context("writer task panicked")??;
        write += t.elapsed();

        let t = Instant::now();
        client.commit(&name, &key).await?;
        commit += t.elapsed();
        committed.push(name.clone());
        parent = name;
    }
    let total = start.elapsed();
    for name in committed.iter().rev() {
        client.remove(name).await?;
    }
    Ok([ms(prep), ms(write), ms(commit), ms(total), bytes as f64 / MIB as f64])
}

async fn benchsuite(args: &Args, prefix: &str) -> Result<Value> {
    let mut rng = rand::thread_rng();
    let pool: Vec<Vec<u8>> = (0..LAYERS * FILES.len())
        .map(|_| {
            let mut v = vec![0u8; MIB];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    let pool = Arc::new(pool);
    let mut client = Client::connect(args).await?;
    let mut cols: [Vec<f64>; 5] = Default::default();
    for r in 0..args.rounds {
        let res = benchsuite_round(&mut client, &format!("{prefix}-bs-r{r}"), pool.clone()).await?;
        for (c, v) in cols.iter_mut().zip(res) {
            c.push(v);
        }
    }
    let total = median(&cols[3]);
    let mib = median(&cols[4]);
    Ok(json!({
        "layers": LAYERS,
        "prepare_ms": median(&cols[0]),
        "write_ms": median(&cols[1]),
        "commit_ms": median(&cols[2]),
        "total_ms": total,
        "mib_written": mib,
        "mib_per_sec": mib / (total / 1000.0),
        "rounds_total_ms": cols[3],
    }))
}

/// Workload (c): a committed busybox-sized parent, then timed Prepares on it.
async fn prepare_on_parent(args: &Args, prefix: &str) -> Result<Value> {
    let tree = strata_tests::image::busybox_tree(std::path::Path::new(strata_tests::image::BUSYBOX))
        .context("build the busybox tree")?;
    let entries = tree.len();
    let mut client = Client::connect(args).await?;
    let base_key = format!("{prefix}-base-active");
    let base = format!("{prefix}-base");
    let mounts = client.prepare(&base_key, "").await?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let m = TempMount::new(&mounts).with_context(|| format!("mount {mounts:?}"))?;
        strata_tests::image::materialize(&tree, m.path()).context("write the busybox tree")?;
        m.unmount().context("unmount the base")?;
        Ok(())
    })
    .await
    .context("writer task panicked")??;
    client.commit(&base, &base_key).await?;

    let mut medians = Vec::new();
    let mut all = Vec::new();
    for r in 0..args.rounds {
        let mut lat = Vec::new();
        for i in 0..args.prepares {
            let key = format!("{prefix}-p-r{r}-{i}");
            let t = Instant::now();
            client.prepare(&key, &base).await?;
            lat.push(ms(t.elapsed()));
            client.remove(&key).await?;
        }
        medians.push(median(&lat));
        all.extend(lat);
    }
    client.remove(&base).await?;
    Ok(json!({
        "parent_entries": entries,
        "prepare_ms": median(&medians),
        "rounds_prepare_ms": medians,
        "prepares": all.len(),
    }))
}

/// A Markdown table of several runs, plus the goal ratios when the
/// expected labels are present.
fn report(files: &[PathBuf]) -> Result<String> {
    let mut runs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parse {}", f.display()))?;
        runs.push(v);
    }
    let get = |v: &Value, path: &[&str]| -> Option<f64> {
        let mut cur = v;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_f64()
    };
    let cell = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    out.push_str("| run | cycles/s, 1 client | cycles/s, 8 clients | benchsuite total ms | prepare ms | write ms | commit ms | MiB/s | prepare on busybox parent ms |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for v in &runs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            v["label"].as_str().unwrap_or("?"),
            cell(get(v, &["cycles", "clients_1", "cycles_per_sec"])),
            cell(get(v, &["cycles", "clients_8", "cycles_per_sec"])),
            cell(get(v, &["benchsuite", "total_ms"])),
            cell(get(v, &["benchsuite", "prepare_ms"])),
            cell(get(v, &["benchsuite", "write_ms"])),
            cell(get(v, &["benchsuite", "commit_ms"])),
            cell(get(v, &["benchsuite", "mib_per_sec"])),
            get(v, &["prepare_on_parent", "prepare_ms"]).map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()),
        ));
    }
    let by = |label: &str| runs.iter().find(|v| v["label"].as_str() == Some(label));
    let mut goals = String::new();
    if let (Some(ours), Some(theirs)) = (by("strata-overlay"), by("containerd-overlayfs")) {
        for c in ["clients_1", "clients_8"] {
            if let (Some(a), Some(b)) =
                (get(ours, &["cycles", c, "cycles_per_sec"]), get(theirs, &["cycles", c, "cycles_per_sec"]))
            {
                let r = a / b;
                goals.push_str(&format!(
                    "- cycles/s, {}: strata overlay / containerd overlayfs = {a:.1} / {b:.1} = **{r:.2}x** (goal >= 2x: {})\n",
                    c.replace('_', " ").replace("clients 1", "1 client").replace("clients 8", "8 clients"),
                    if r >= 2.0 { "met" } else { "not met" }
                ));
            }
        }
        if let (Some(a), Some(b)) = (get(ours, &["benchsuite", "total_ms"]), get(theirs, &["benchsuite", "total_ms"])) {
            goals.push_str(&format!(
                "- benchsuite total: containerd overlayfs / strata overlay = {b:.0} ms / {a:.0} ms = {:.2}x (no goal set)\n",
                b / a
            ));
        }
    }
    if let (Some(ours), Some(theirs)) = (by("strata-vfs"), by("containerd-native")) {
        if let (Some(a), Some(b)) =
            (get(ours, &["prepare_on_parent", "prepare_ms"]), get(theirs, &["prepare_on_parent", "prepare_ms"]))
        {
            let r = b / a;
            goals.push_str(&format!(
                "- Prepare on a busybox parent: containerd native / strata vfs = {b:.2} ms / {a:.2} ms = **{r:.2}x** faster (goal >= 3x: {})\n",
                if r >= 3.0 { "met" } else { "not met" }
            ));
        }
    }
    if !goals.is_empty() {
        out.push('\n');
        out.push_str(&goals);
    }
    Ok(out)
}

fn fmt_num(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_f64).map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.report.is_empty() {
        print!("{}", report(&args.report)?);
        return Ok(());
    }
    if args.rounds == 0 || args.seconds == 0 || args.prepares == 0 {
        bail!("--rounds, --seconds and --prepares must be at least 1");
    }
    let workloads = if args.workloads.is_empty() {
        vec![Workload::Cycles, Workload::Benchsuite, Workload::Prepare]
    } else {
        args.workloads.clone()
    };
    let label = args.label.clone().or_else(|| args.snapshotter.clone()).unwrap_or_default();
    let prefix = run_prefix();
    let mut result = serde_json::Map::new();
    result.insert("label".into(), json!(label));
    result.insert("address".into(), json!(args.address));
    result.insert("snapshotter".into(), json!(args.snapshotter));
    result.insert("namespace".into(), json!(args.namespace));
    result.insert("rounds".into(), json!(args.rounds));

    for w in workloads {
        match w {
            Workload::Cycles => {
                let v = cycles(&args, &prefix).await?;
                for c in ["clients_1", "clients_8"] {
                    println!(
                        "{label}: cycles {c}: {} cycles/s (median cycle {} ms)",
                        fmt_num(&v[c], "cycles_per_sec"),
                        fmt_num(&v[c], "cycle_ms")
                    );
                }
                result.insert("cycles".into(), v);
            }
            Workload::Benchsuite => {
                let v = benchsuite(&args, &prefix).await?;
                println!(
                    "{label}: benchsuite 16 layers: total {} ms (prepare {} ms, write {} ms, commit {} ms), {} MiB/s",
                    fmt_num(&v, "total_ms"),
                    fmt_num(&v, "prepare_ms"),
                    fmt_num(&v, "write_ms"),
                    fmt_num(&v, "commit_ms"),
                    fmt_num(&v, "mib_per_sec")
                );
                result.insert("benchsuite".into(), v);
            }
            Workload::Prepare => {
                let v = prepare_on_parent(&args, &prefix).await?;
                println!(
                    "{label}: prepare on a busybox parent ({} entries): median {} ms",
                    v["parent_entries"],
                    fmt_num(&v, "prepare_ms")
                );
                result.insert("prepare_on_parent".into(), v);
            }
        }
    }
    let value = Value::Object(result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
