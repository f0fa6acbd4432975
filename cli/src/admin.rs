//! `borealis admin`: operator commands on a scheduler's durable state (Aurora's
//! listBackups, stageRecovery + commitRecovery), and the cluster's certificates and tokens
//! (`certs.rs`).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Backups of the scheduler's state.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Make the cluster CA (once per --out directory, then reused) and certificates of it for
    /// the scheduler (--scheduler-name) and agents (--agent): NAME.pem and NAME-key.pem.
    Certs(crate::certs::CertsArgs),
    /// Print a new random client token on stdout, and its auth file entry (the token's
    /// SHA-256 and the permissions) on stderr or appended to --append FILE.
    Token(crate::certs::TokenArgs),
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Ask a running scheduler to write a backup now (Aurora: performBackup); prints its name.
    Now {
        /// The scheduler's HTTP address (its --http-port).
        #[arg(long, value_name = "HOST:PORT")]
        http: String,
    },
    /// List backups, newest first.
    List {
        /// The scheduler's data directory.
        #[arg(long, default_value = "borealis-data")]
        data_dir: PathBuf,
        /// The backup directory (default: DATA_DIR/backups).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
    /// Replace the scheduler's state with a backup. The scheduler must be stopped; the
    /// current state is kept aside in DATA_DIR/replaced-<time>/.
    Restore {
        /// The backup's name, as `list` prints it.
        name: String,
        #[arg(long, default_value = "borealis-data")]
        data_dir: PathBuf,
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
}

pub fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Certs(args) => crate::certs::run_certs(&args),
        AdminCommand::Token(args) => crate::certs::run_token(&args),
        AdminCommand::Backup { command } => match command {
            BackupCommand::Now { http } => {
                let name = post_backup(&http)?;
                println!("backup {name} requested: every shard writes it within a few seconds");
                Ok(())
            }
            BackupCommand::List {
                data_dir,
                backup_dir,
            } => {
                let dir = backup_dir.unwrap_or_else(|| data_dir.join("backups"));
                let backups = borealis_store::backup::list_backups(&dir).map_err(|e| {
                    anyhow::anyhow!("cannot list backups in {}: {e}", dir.display())
                })?;
                if backups.is_empty() {
                    println!("no backups in {}", dir.display());
                }
                for b in backups {
                    println!("{}  {} shard(s)  {} bytes", b.name, b.shards, b.bytes);
                }
                Ok(())
            }
            BackupCommand::Restore {
                name,
                data_dir,
                backup_dir,
            } => {
                let dir = backup_dir.unwrap_or_else(|| data_dir.join("backups"));
                let _lock = borealis_shards::lock_data_dir(&data_dir).map_err(|e| {
                    anyhow::anyhow!("{e:#} (stop the scheduler before restoring a backup)")
                })?;
                let report = borealis_store::backup::restore_backup(&dir, &name, &data_dir)
                    .map_err(|e| anyhow::anyhow!("cannot restore backup {name}: {e}"))?;
                println!(
                    "restored backup {name} into {}: {report:?}",
                    data_dir.display()
                );
                Ok(())
            }
        },
    }
}

/// `POST /admin/backup` over a plain socket: the answer's body is the backup's name.
fn post_backup(http: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let addr = http
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("bad address {http}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("bad address {http}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| anyhow::anyhow!("cannot reach the scheduler's HTTP port at {http}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /admin/backup HTTP/1.1\r\nHost: {http}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default().to_string();
    anyhow::ensure!(
        status.contains(" 202 "),
        "the scheduler answered {status:?}"
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    Ok(body.to_string())
}
