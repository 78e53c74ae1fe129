//! `stratad`: the engine daemon. Wiring only; the work is in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use stratad::config::{self, DaemonConfig};
use stratad::server::{self, ListenAddr, Listener, Shutdown, SystemdSockets};
use stratad::storage::{self, BuiltinDrivers, StorageRequest};
use stratad::system::ImageStats;
use stratad::{api, Engine, EngineConfig, EventBus};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Taken before any thread starts: it reads and clears LISTEN_FDS.
    let systemd = SystemdSockets::from_env();
    let config = match config::load_from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stratad: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    if config.validate_only {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stratad: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, systemd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("stratad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &DaemonConfig) {
    let level = if config.debug {
        "debug".to_string()
    } else {
        match config.log_level.as_deref() {
            Some("fatal" | "panic") => "error".to_string(),
            Some(level) => level.to_string(),
            None => "info".to_string(),
        }
    };
    // Our crates at the chosen level; the HTTP and TLS stacks stay quieter.
    let filter = EnvFilter::try_from_env("STRATAD_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("warn,stratad={level},strata_snapshotter={level},strata_drivers={level}"))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

async fn run(config: DaemonConfig, mut systemd: SystemdSockets) -> anyhow::Result<()> {
    if let Some(file) = &config.config_file {
        tracing::info!(file = %file.display(), "configuration file loaded");
    }
    let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
    let addresses = config
        .hosts
        .iter()
        .map(|h| server::parse_host(h, tls.is_some()))
        .collect::<Result<Vec<_>, _>>()?;

    let storage = storage::open_storage(
        &StorageRequest {
            data_root: &config.data_root,
            driver: config.storage_driver.as_deref(),
            options: &config.storage_opts,
            remote_address: config.snapshotter_address.as_deref(),
        },
        Arc::new(BuiltinDrivers),
    )
    .await
    .context("cannot open the storage")?;
    tracing::info!(driver = %storage.driver, dir = %storage.driver_dir.display(), "storage driver");

    let events = EventBus::new();
    let images = Arc::new(
        stratad::images::ImageService::open(&storage.images_dir, storage.snapshotter.clone(), events.clone())
            .context("cannot open the image store")?,
    );
    let shutdown = Shutdown::new();
    let engine = Arc::new(Engine::new(stratad::state::EngineParts {
        config: EngineConfig {
            data_root: config.data_root.clone(),
            debug: config.debug,
            log_driver: config.log_driver.clone(),
            log_opts: config.log_opts.clone(),
            insecure_registries: config.insecure_registries.clone(),
            storage_opts: config.storage_opts.clone(),
            snapshotter_address: config.snapshotter_address.clone(),
        },
        driver: storage.driver.clone(),
        snapshotter: storage.snapshotter.clone(),
        events,
        image_stats: images.clone() as Arc<dyn ImageStats>,
        images,
        shutdown: shutdown.clone(),
    })?);

    let mut listeners: Vec<Listener> = Vec::new();
    for address in &addresses {
        match address {
            ListenAddr::Unix(path) => listeners.push(server::bind_unix(path)?),
            ListenAddr::Tcp(addr) => {
                let verified = config.tls.as_ref().is_some_and(|t| t.verify_ca.is_some());
                if !verified {
                    server::warn_insecure_tcp(&format!("tcp://{addr}"), tls.is_some());
                }
                listeners.push(server::bind_tcp(addr, tls.clone()).await?);
            }
            ListenAddr::Fd(which) => listeners.extend(systemd.take(*which, tls.as_ref())?),
        }
    }

    let app = api::router(engine.clone());
    let signals = shutdown.clone();
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM received; shutting down");
                    break;
                }
                _ = sigint.recv() => {
                    tracing::info!("SIGINT received; shutting down");
                    break;
                }
                // A hangup must not kill the daemon; settings apply on restart.
                _ = sighup.recv() => tracing::warn!("SIGHUP received: configuration reload is not supported; restart stratad to apply changes"),
            }
        }
        signals.trigger();
    });
    tracing::info!(version = api::ENGINE_VERSION, api = api::API_VERSION, "daemon has completed initialization");
    server::serve(listeners, app, shutdown).await;
    engine.containers.shutdown().await;

    if let Err(e) = engine.snapshotter.close().await {
        tracing::warn!(error = %e, "closing the snapshotter failed");
    }
    tracing::info!("daemon shut down");
    Ok(())
}
