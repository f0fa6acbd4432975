//! `borealis admin`: operator commands on a scheduler's durable state (Aurora's
//! listBackups, stageRecovery + commitRecovery).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Backups of the scheduler's state.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
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
        AdminCommand::Backup { command } => match command {
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
