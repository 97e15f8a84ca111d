use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use preview_proxy::config::{settings_help, Config};
use preview_proxy::{server, signed_url, tls};

const DEFAULT_CONFIG: &str = "config/proxy.toml";

/// Reverse proxy for sandbox preview URLs (<port>-<sandboxId>.<domain>).
#[derive(Parser)]
#[command(version, after_help = settings_help())]
struct Cli {
    /// TOML settings file [default: config/proxy.toml, if present]
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Mint a signed preview URL in the embedded registry and print it
    SignUrl {
        /// Sandbox id (must be in the registry)
        #[arg(long)]
        sandbox: String,
        /// App port the URL opens
        #[arg(long)]
        port: u16,
        /// Lifetime in seconds (1-86400)
        #[arg(long, default_value_t = 60)]
        expires_in: u64,
    },
    /// Expire a signed preview URL's token now
    RevokeUrl {
        /// The token (the part after `<port>-` in the URL's host)
        token: String,
    },
    /// Write a self-signed development certificate for *.<domain>
    DevCert {
        /// Base domain of the preview hosts
        #[arg(long, default_value = "preview.localhost")]
        domain: String,
        /// Directory to write <domain>.crt and <domain>.key to
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
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
    let now = preview_proxy::control_plane::unix_now();
    let done = match cli.command {
        None => None,
        Some(Command::SignUrl { sandbox, port, expires_in }) => {
            Some(signed_url::sign(&config, &sandbox, port, expires_in, now).map(|url| println!("{url}")))
        }
        Some(Command::RevokeUrl { token }) => {
            Some(signed_url::revoke(&config, &token, now).map(|()| println!("revoked")))
        }
        Some(Command::DevCert { domain, out }) => Some(tls::write_dev_certificate(&domain, &out).map(|(c, k)| {
            println!("wrote {} and {}", c.display(), k.display());
            println!(
                "use: ENABLE_TLS=true PROXY_PROTOCOL=https TLS_CERT_FILE={} TLS_KEY_FILE={}",
                c.display(),
                k.display()
            );
        })),
    };
    if let Some(result) = done {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let workers = config.workers;
    match server::run_workers(config, workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
