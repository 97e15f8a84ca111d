use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use preview_proxy::config::{settings_help, Config};
use preview_proxy::{proxy::Proxy, server};

const DEFAULT_CONFIG: &str = "config/proxy.toml";

/// Reverse proxy for sandbox preview URLs (<port>-<sandboxId>.<domain>).
#[derive(Parser)]
#[command(version, after_help = settings_help())]
struct Cli {
    /// TOML settings file [default: config/proxy.toml, if present]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let env: HashMap<String, String> = std::env::vars().collect();
    let path = cli.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
    let config = match Config::load(&path, cli.config.is_some(), &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the Tokio runtime");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let proxy = Arc::new(Proxy::new(config)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("PROXY_LISTEN_ADDRESS/PROXY_PORT: cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "preview-proxy listening");
    server::run(listener, proxy, server::shutdown_signal()).await?;
    Ok(())
}
