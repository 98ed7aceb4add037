//! `concord token`: mints an HS256 client JWT with the secret the server verifies, for
//! development and tests (real deployments have their identity provider sign tokens).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::{self, Config, Settings};
use crate::secret;

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user the token authenticates (its `sub` claim)
    #[arg(long)]
    pub(crate) user: String,
    /// How long the token is valid, in seconds
    #[arg(long, default_value_t = 86_400, value_name = "SECS")]
    pub(crate) ttl_secs: u64,
    /// The server's configuration file, to find its data directory, secret and audience
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The server's data directory, whose `secret` signs the token [default: ./concord-data]
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Sign with the secret in this file instead (the server's --jwt-secret-file)
    #[arg(long, env = "CONCORD_JWT_SECRET_FILE", value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// The audience to put in `aud` (the server's --jwt-audience)
    #[arg(long, env = "CONCORD_JWT_AUDIENCE", value_name = "AUD")]
    pub(crate) audience: Option<String>,
    /// Set when the server verifies RS256 tokens, which this command cannot sign.
    #[arg(long = "jwt-rs256-public-key", env = "CONCORD_JWT_RS256_PUBLIC_KEY", hide = true)]
    pub(crate) rs256_public_key: Option<PathBuf>,
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    if args.user.is_empty() {
        bail!("--user must not be empty");
    }
    let mut file = match &args.config {
        Some(path) => config::read_file(path)?,
        None => Settings::default(),
    };
    let mut rs256_public_key = args.rs256_public_key;
    if args.secret_file.is_some() {
        // An explicit secret wins over whatever key the server is configured with.
        file.jwt_rs256_public_key = None;
        rs256_public_key = None;
    }
    let flags = Settings {
        data_dir: args.data_dir,
        jwt_secret_file: args.secret_file,
        jwt_audience: args.audience,
        jwt_rs256_public_key: rs256_public_key,
        ..Settings::default()
    };
    let config = Config::resolve(flags, file)?;
    let secret = match (&config.jwt_secret_file, &config.jwt_rs256_public_key) {
        (Some(path), _) => secret::read(path)?,
        (None, Some(_)) => bail!(
            "the server verifies RS256 tokens, which only your identity provider can sign; \
             pass --secret-file to sign with an HS256 secret"
        ),
        (None, None) => {
            let path = secret::data_dir_secret(&config.data_dir);
            if !path.exists() {
                bail!(
                    "{} does not exist: start `concord serve` once first, or pass --secret-file",
                    path.display()
                );
            }
            secret::read(&path)?
        }
    };
    let token = concord_server::mint_token(
        &secret,
        &args.user,
        config.jwt_audience.as_deref(),
        Duration::from_secs(args.ttl_secs),
    )
    .context("cannot sign the token")?;
    println!("{token}");
    Ok(())
}
