//! `cairn admin`: operator accounts of the web console, managed offline against the server's
//! data directory (stop the server first: the store is opened exclusively).
//!
//! - `cairn admin create --username NAME [--role admin]`: creates a user. The password comes
//!   from `CAIRN_ADMIN_PASSWORD` or the first line of standard input, never from the command
//!   line (which other users can see in the process list). An administrator enrols a TOTP
//!   authenticator at first sign-in.
//! - `cairn admin setup-link`: a fresh one-time link to create the first administrator in the
//!   browser (valid one hour; replaces any previous link).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cairn_store::Role;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server's data directory (default ./cairn-data).
    #[arg(long, global = true, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a user (password from CAIRN_ADMIN_PASSWORD or the first line of stdin).
    Create {
        #[arg(long)]
        username: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Print a fresh one-time link to create the first administrator in the browser.
    SetupLink {
        /// The console's URL as users reach it.
        #[arg(
            long,
            env = "CAIRN_WEB_PUBLIC_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        public_url: String,
        /// How long the link works, in minutes.
        #[arg(long, default_value_t = 60)]
        valid_minutes: u64,
    },
}

fn read_password() -> anyhow::Result<Zeroizing<String>> {
    if let Ok(password) = std::env::var("CAIRN_ADMIN_PASSWORD") {
        return Ok(Zeroizing::new(password));
    }
    eprintln!("password (one line on standard input):");
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password")?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("./cairn-data"));
    let store = crate::server_cmd::open_store(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            AdminCommand::Create { username, role } => {
                let role = Role::parse(&role)
                    .with_context(|| format!("unknown role {role:?} (viewer, operator, admin)"))?;
                let password = read_password()?;
                cairn_web::create_user_offline(
                    &store,
                    &username,
                    &password,
                    role,
                    &cairn_web::PasswordHashing::default(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                println!("created {} {username}", role.as_str());
                if role == Role::Admin {
                    println!("{username} enrols an authenticator (TOTP) at first sign-in");
                }
            }
            AdminCommand::SetupLink {
                public_url,
                valid_minutes,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let expires = (now + Duration::from_secs(valid_minutes.saturating_mul(60)))
                    .as_millis() as u64;
                let link = cairn_web::issue_setup_link(&store, &public_url, expires)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                println!("{link}");
            }
        }
        anyhow::Ok(())
    })
}
