//! The command line: parses it, reads the settings, and runs the proxy or
//! one of its tools. Exit codes: 0 done, 1 failed, 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use preview_proxy::config::{settings_from_env, settings_help, Config, ConfigError};
use preview_proxy::control_plane::{signed_url, unix_now};
use preview_proxy::pipeline::access_log::Lines;
use preview_proxy::server::{self, StartError};

const DEFAULT_CONFIG: &str = "config/proxy.toml";

/// jemalloc, not glibc's malloc: 4 % fewer instructions per request, and
/// memory that idle connections free goes back to the system. glibc keeps
/// freed pages in its per-thread arenas: 5,000 parked keep-alive connections
/// held 14 KiB of RSS each for good; jemalloc's background thread, with a
/// one-second decay (`.cargo/config.toml`), returns them (BENCHMARKS.md,
/// seventh round).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    #[cfg(feature = "dev-cert")]
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
    let path = cli.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
    let loaded = settings_from_env(std::env::vars_os()).and_then(|env| Config::load(&path, cli.config.is_some(), &env));
    let config = match loaded {
        Ok(config) => config,
        Err(e) => return bad_config(&e),
    };
    let (access_lines, _log_writer) = init_logging(config.json_logs);
    let now = unix_now();
    let done: Option<anyhow::Result<()>> = match cli.command {
        None => None,
        Some(Command::SignUrl { sandbox, port, expires_in }) => Some(
            signed_url::sign(&config, &sandbox, port, expires_in, now).map(|url| println!("{url}")).map_err(Into::into),
        ),
        Some(Command::RevokeUrl { token }) => {
            Some(signed_url::revoke(&config, &token, now).map(|()| println!("revoked")).map_err(Into::into))
        }
        #[cfg(feature = "dev-cert")]
        Some(Command::DevCert { domain, out }) => Some(
            server::tls::write_dev_certificate(&domain, &out)
                .map(|(c, k)| {
                    println!("wrote {} and {}", c.display(), k.display());
                    println!(
                        "use: ENABLE_TLS=true PROXY_PROTOCOL=https TLS_CERT_FILE={} TLS_KEY_FILE={}",
                        c.display(),
                        k.display()
                    );
                })
                .map_err(Into::into),
        ),
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
    match server::run_workers(config, workers, access_lines) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => bad_config(&e),
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` (default `info`) to stdout, as text or one JSON object a line.
/// Lines are written by a thread of their own through a buffer, so a worker
/// never waits on a `write` per access line; none is dropped (a writer that
/// falls behind slows the workers instead). Access lines go to the same
/// writer, formatted by the proxy in the same form, in batches of up to
/// 16 KiB a worker: 4,096 messages in flight are 64 MiB of access lines at
/// most (tracing-appender's default of 128,000 made a 4 MiB queue, written
/// through at start-up, for nothing). Keep the guard until exit: it
/// flushes what is left.
fn init_logging(json: bool) -> (Lines, tracing_appender::non_blocking::WorkerGuard) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(4096)
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let lines = Lines::Written { json, out: writer.clone() };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        fmt.with_ansi(ansi).init();
    }
    (lines, guard)
}

/// `RUST_LOG`, `info` when unset or unreadable. rustls's warnings are about
/// what clients send (a client that sends an IP address as its TLS server
/// name, as wrk does, makes one a connection): any client could fill the log
/// with them, so rustls logs only errors unless `RUST_LOG` names it.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = rust_log.unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_new(spec).unwrap_or_else(|_| "info".into());
    match (spec.contains("rustls"), "rustls=error".parse()) {
        (false, Ok(quiet)) => filter.add_directive(quiet),
        _ => filter,
    }
}

fn bad_config(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// The lines a subscriber with `log_filter(rust_log)` writes for a
    /// rustls warning and one of the proxy's.
    fn logged(rust_log: Option<&str>) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::log_filter(rust_log))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension");
            tracing::warn!(target: "preview_proxy::server", "proxy warning");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn rustls_warnings_about_clients_stay_out_of_the_log_unless_asked_for() {
        for rust_log in [None, Some("info"), Some("warn"), Some("preview_proxy=debug")] {
            let text = logged(rust_log);
            assert!(text.contains("proxy warning"), "{rust_log:?}: {text}");
            assert!(!text.contains("Illegal SNI"), "{rust_log:?}: {text}");
        }
        assert!(logged(Some("warn,rustls=warn")).contains("Illegal SNI"));
        assert!(!logged(Some("error")).contains("proxy warning"));
    }
}
