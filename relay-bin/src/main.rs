//! `ucmrc`: the UCMRC standalone media relay.
//!
//! ```text
//! ucmrc relay [--config FILE]     run the relay (embedded loopback defaults without a file)
//! ucmrc check-config FILE         validate a configuration file
//! ucmrc demo [--calls N]          relay + connector + simulated PBX and phones, real SRTP
//! ucmrc connect --config FILE     run a connector beside a PBX (--check: validate only)
//! ucmrc token new [--tenant NAME]  print a fresh token and its hash line
//! ```

use ucmrc::{config, connect, daemon};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// UCMRC media relay: forwards SRTP/DTLS/STUN between PBXs behind NAT and
/// their endpoints without ever decrypting them.
#[derive(Debug, Parser)]
#[command(name = "ucmrc", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the relay. Without --config it uses embedded loopback-only defaults:
    /// media on 127.0.0.1 ports 10000-19999, admin API on http://127.0.0.1:9180
    /// without a token.
    Relay {
        /// TOML configuration file (see docs/ucmrc.example.toml).
        #[arg(long, short, env = "UCMRC_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print the effective settings as TOML (secrets masked).
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
        /// Print only warnings and errors (for ExecStartPre: the journal gets no config dump).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run a relay, a connector, a simulated PBX and N phones in one process on loopback,
    /// exchanging real SRTP through the relay; prints live figures, then a summary.
    #[cfg(feature = "demo")]
    Demo {
        /// Simulated calls.
        #[arg(long, default_value_t = 20)]
        calls: usize,
        /// Seconds to run (0: until interrupted).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Packets per second per direction per call.
        #[arg(long, default_value_t = 50)]
        pps: u32,
    },
    /// Run a connector beside a PBX: keeps the authenticated TLS control
    /// channel to the relay up and exposes the configured services.
    Connect {
        /// TOML connector configuration (relay, ca_file or pinned_sha256,
        /// tenant, token_file, services).
        #[arg(long, short)]
        config: PathBuf,
        /// Validate the configuration and exit.
        #[arg(long)]
        check: bool,
    },
    /// Token helpers (admin API and tenant connectors).
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Print a fresh random token and the line to put into the relay's
    /// config (only its SHA-256 is stored).
    New {
        /// Print the `[tenants.NAME]` block for a connector instead of the
        /// admin API line.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ucmrc: cannot write: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Relay { config } => {
            let cfg = match &config {
                Some(path) => match config::Config::load(path).and_then(|c| c.check_runtime().map(|()| c)) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("ucmrc: invalid configuration: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => config::Config::embedded(),
            };
            match daemon::run(cfg, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ucmrc: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::CheckConfig { file, quiet } => match config::Config::load(&file).and_then(|c| c.check_runtime().map(|()| c)) {
            Ok(c) if quiet => {
                for w in c.warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Ok(c) => {
                let mut text = format!("# {}: ok\n", file.display());
                for w in c.warnings() {
                    text += &format!("# warning: {w}\n");
                }
                text += "# effective configuration (defaults filled in, secrets masked):\n";
                text += &c.effective_toml();
                print_out(&text)
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "demo")]
        Cmd::Demo { calls, seconds, pps } => match ucmrc::demo::run(ucmrc::demo::DemoOptions { calls, seconds, pps }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ucmrc demo: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Connect { config, check } => match connect::ConnectConfig::load(&config) {
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
            Ok(c) if check => print_out(&format!("{}: ok\n{:#?}\n", config.display(), c.connector)),
            Ok(c) => match connect::run(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ucmrc connect: {e}");
                    ExitCode::FAILURE
                }
            },
        },
        Cmd::Token { command: TokenCmd::New { tenant } } => match daemon::new_token() {
            Ok((token, hash)) => print_out(&match tenant {
                None => format!(
                    "token (give to API clients, store it safely): {token}\nconfig line for [admin]:\ntoken_sha256 = \"{hash}\"\n"
                ),
                Some(t) => format!(
                    "token (put it alone in the connector's token_file, chmod 600): {token}\nrelay config:\n[tenants.{t}]\ntoken_sha256 = \"{hash}\"\n"
                ),
            }),
            Err(e) => {
                eprintln!("ucmrc: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
