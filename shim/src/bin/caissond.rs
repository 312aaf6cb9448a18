//! `caissond`: the CRI v1 daemon.
//!
//! ```text
//! caissond [--config FILE]                 serve CRI (embedded default config without --config)
//! caissond --print-default-config          print the embedded default config
//! caissond images import FILE [--name REF] [--socket PATH]
//!                                          load an image archive into the running daemon
//! caissond status [--json] [--socket PATH] the running daemon's health, handlers and
//!                                          their readiness, pods and containers, config
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use caisson_image::ImageStore;
use caisson_shim::config::{Config, LogFormat, DEFAULT_CONFIG};
use caisson_shim::runtime::Runtime;
use caisson_shim::shims::{serve_events, ShimManager};

#[path = "caissond/status.rs"]
mod status;

/// Logs to stderr as text, or as one JSON object per line: the event's
/// fields at the top level (`message`, ...), the innermost span's fields
/// under `span` (a CRI call's `cri` span: `method`, `pod_id`,
/// `container_id`) and every enclosing span under `spans`.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAISSON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: caissond [--config FILE] | --print-default-config | images import FILE [--name REF] [--socket PATH] | status [--json] [--socket PATH]"
    );
    std::process::exit(2)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config_path: Option<PathBuf> = None;
    let mut it = args.iter().enumerate();
    while let Some((i, arg)) = it.next() {
        match arg.as_str() {
            "--print-default-config" => {
                print!("{DEFAULT_CONFIG}");
                return Ok(());
            }
            "--config" => {
                config_path = Some(
                    it.next()
                        .map(|(_, p)| PathBuf::from(p))
                        .unwrap_or_else(|| usage()),
                )
            }
            "--version" | "-v" => {
                println!("caissond {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            "images" => return images_command(&args[i + 1..], config_path.as_deref()),
            "status" => return status::command(&args[i + 1..], config_path.as_deref()),
            "-h" | "--help" => usage(),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let config = match &config_path {
        Some(p) => Config::load(p).map_err(anyhow::Error::msg)?,
        None => Config::default_config(),
    };
    init_logging(&config);
    if let Some(path) = &config_path {
        caisson_shim::admin::set_config_path(path);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    for dir in [&config.root_dir, &config.run_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut images = ImageStore::open(&config.image_dir()).context("opening the image store")?;
    images.set_max_unpacked_layer_size(config.images.max_unpacked_layer_size);
    let images = Arc::new(images);
    let shim_binary = Config::helper_binary(&config.shim_binary, "containerd-shim-caisson-v2")
        .map_err(anyhow::Error::msg)?;
    let pause_binary =
        Config::helper_binary(&config.pause_binary, "caisson-pause").map_err(anyhow::Error::msg)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let events_socket = config.events_socket();
    let _events = serve_events(&events_socket, tx).context("serving the shim events socket")?;
    let shims = ShimManager {
        binary: shim_binary,
        run_dir: config.shim_run_dir(),
        events_address: format!("unix://{}", events_socket.display()),
        criu_path: caisson_sandbox::checkpoint::criu_path(Some(&config.checkpoint.criu_path)),
        pod_mount_roots: Vec::new(),
    };
    let socket = config.socket.clone();
    let rt = Runtime::new(config, images.clone(), shims, pause_binary)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::spawn(rt.clone().handle_events(rx));
    rt.recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovering state: {e}"))?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down (containers keep running)");
    };
    let served = caisson_shim::server::serve(&socket, rt.clone(), images, shutdown).await;
    rt.release_pod_mount_roots();
    // Shims reconnect to the next caissond's socket at the same path.
    let _ = std::fs::remove_file(&events_socket);
    served
}

/// `caissond images import FILE [--name REF] [--socket PATH]`
fn images_command(args: &[String], config_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("import") {
        usage();
    }
    let mut file = None;
    let mut name = String::new();
    let mut socket = configured_socket(config_path)?;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--name" => name = it.next().cloned().unwrap_or_else(|| usage()),
            "--socket" => socket = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            f if file.is_none() => file = Some(PathBuf::from(f)),
            _ => usage(),
        }
    }
    let file = file.unwrap_or_else(|| usage());
    let file = std::fs::canonicalize(&file).with_context(|| format!("{}", file.display()))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let channel = caisson_shim::client::unix_channel(&socket).await?;
            let mut client = caisson_proto::admin::images_client::ImagesClient::new(channel);
            let reply = client
                .import(caisson_proto::admin::ImportRequest {
                    path: file.display().to_string(),
                    name,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
                .into_inner();
            for image in reply.images {
                println!("{} {}", image.id, image.repo_tags.join(" "));
            }
            Ok(())
        })
}

/// The CRI socket of the config at `config_path` (the embedded default's
/// without one).
fn configured_socket(config_path: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    Ok(match config_path {
        Some(p) => Config::load(p).map_err(anyhow::Error::msg)?.socket,
        None => Config::default_config().socket,
    })
}
