//! What each CLI command does. Startup code: `anyhow` is fine here.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::{self, RunOptions};
use crate::cli::{Cli, Command, ConfigCommand, HealthcheckArgs, Probe, ServeArgs, StoreCommand};
use crate::config::{self, Config, LogFormat, Settings};
use crate::store::ExportRecord;

// Over 80 lines: one match arm per CLI command, each a few lines.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.as_deref();
    match cli.command {
        Command::Serve(args) => {
            let settings = settings(path, &args)?;
            init_tracing(&settings.raw);
            install_panic_hook();
            let shutdown = CancellationToken::new();
            tokio::spawn(watch_signals(shutdown.clone()));
            let opts = RunOptions {
                ready_file: args.ready_file.clone(),
                ..RunOptions::default()
            };
            app::run(settings, opts, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck(args) => healthcheck(path, args).await,
        Command::Config(ConfigCommand::Print(args)) => {
            let cfg = config::load(path, &args.overrides())?;
            cfg.clone().finish()?;
            print!("{}", cfg.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Export { args, out }) => {
            let settings = settings(path, &args)?;
            let opened =
                app::open_store_offline(&settings, std::sync::Arc::new(crate::clock::SystemClock))
                    .await?;
            let records = opened.store.export_all().await?;
            let write = |w: &mut dyn Write| -> anyhow::Result<()> {
                for r in &records {
                    serde_json::to_writer(&mut *w, r)?;
                    w.write_all(b"\n")?;
                }
                Ok(w.flush()?)
            };
            match out {
                // every record, as stored: readable by this user only
                Some(p) => write_export_file(&p, write)?,
                None => write(&mut std::io::stdout().lock())?,
            }
            eprintln!("exported {} records", records.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Import { args, input }) => {
            let settings = settings(path, &args)?;
            let opened =
                app::open_store_offline(&settings, std::sync::Arc::new(crate::clock::SystemClock))
                    .await?;
            let reader: Box<dyn BufRead> = match input {
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?,
                )),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut records = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let r: ExportRecord = serde_json::from_str(&line)
                    .with_context(|| format!("line {}: not an export record", i + 1))?;
                records.push(r);
            }
            let records = without_canary(records, |sealed| {
                opened.sealer.open(CANARY.as_bytes(), sealed).is_ok()
            })
            .map_err(|e| anyhow::anyhow!("{e}: nothing was imported. If this data directory is new, remove it, put the exporting store's master.key in it (or set store.master_key_file to its key) and import again"))?;
            let n = opened.store.import(records).await?;
            opened.store.flush().await?;
            eprintln!("imported {n} records");
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(StoreCommand::Migrate {
            args,
            from,
            to,
            key_prefix,
        }) => {
            let settings = settings(path, &args)?;
            migrate(&settings, &from, &to, key_prefix.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { stdio } => {
            if !stdio {
                anyhow::bail!("use `idstack agent --stdio`");
            }
            crate::load::agent::run_stdio().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => {
            let ok = crate::load::run(args).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::AdminToken(args) => {
            let settings = settings(path, &args)?;
            let opened =
                app::open_store_offline(&settings, std::sync::Arc::new(crate::clock::SystemClock))
                    .await?;
            match crate::server::first_start::stored_admin_token(&opened).await? {
                Some(t) => {
                    println!("{}", t.expose());
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no sandbox admin token in this store (admin.tokens configured, or never started)");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn settings(path: Option<&std::path::Path>, args: &ServeArgs) -> anyhow::Result<Settings> {
    Ok(config::load(path, &args.overrides())?.finish()?)
}

fn init_tracing(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Logs panics with the version (the request span, when there is one, carries the request id).
/// Handler panics are then contained by the observe middleware and answered 500.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic>".into());
        tracing::error!(version = env!("CARGO_PKG_VERSION"), %location, panic = %msg, "panic");
    }));
}

async fn watch_signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

async fn healthcheck(
    path: Option<&std::path::Path>,
    args: HealthcheckArgs,
) -> anyhow::Result<ExitCode> {
    let base = match args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let cfg = config::load(path, &[])?;
            let bind = cfg.server.bind.replace("0.0.0.0", "127.0.0.1");
            format!("http://{bind}")
        }
    };
    let probe = match args.probe {
        Probe::Live => "live",
        Probe::Ready => "ready",
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    match client.get(format!("{base}/health/{probe}")).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!(
                "{probe}: HTTP {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{probe}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Opens `sled:DATA_DIR` or `redis://…` for `store migrate`.
async fn open_spec(
    settings: &Settings,
    spec: &str,
    key_prefix: Option<&str>,
) -> anyhow::Result<std::sync::Arc<dyn crate::store::Store>> {
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
    if let Some(dir) = spec.strip_prefix("sled:") {
        let dir = std::path::PathBuf::from(dir);
        let cache = settings.raw.store.cache_capacity_bytes;
        let store =
            tokio::task::spawn_blocking(move || crate::store::SledStore::open(&dir, cache, clock))
                .await
                .context("store open task")?
                .with_context(|| format!("opening {spec}"))?;
        return Ok(std::sync::Arc::new(store));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        #[cfg(feature = "redis")]
        {
            use crate::store::redis_store::{RedisOptions, RedisStore};
            let mut opts = RedisOptions::from_settings(settings);
            opts.urls = spec
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            opts.cluster = settings.raw.store.redis.cluster || opts.urls.len() > 1;
            if let Some(p) = key_prefix {
                opts.key_prefix = p.to_string();
            }
            let store = RedisStore::connect(opts, clock)
                .await
                .context("connecting to Redis")?;
            return Ok(std::sync::Arc::new(store));
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = key_prefix;
            anyhow::bail!("this build has no `redis` feature");
        }
    }
    anyhow::bail!("`{spec}`: expected sled:DATA_DIR, redis://… or rediss://…")
}

/// Writes an export (every record, as stored) to `p`, readable by this user only. A regular file
/// is written as a new 0600 file beside `p` and renamed over it once complete, so a reader who
/// opened the old file before (secrets review: it kept its inode) never sees the export, and an
/// export cut short leaves the old file whole. A character device (`/dev/null`, a terminal) is
/// written in place. Never through a symbolic link, into another user's file, or into a FIFO or
/// socket (each of those, planted in a shared directory, would hand the export to whoever made it).
fn write_export_file(
    p: &std::path::Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let refuse =
        |what: &str| anyhow::anyhow!("{} is {what}: export to a file of your own", p.display());
    if let Ok(m) = std::fs::symlink_metadata(p) {
        let t = m.file_type();
        if t.is_symlink() {
            return Err(refuse("a symbolic link"));
        }
        #[cfg(unix)]
        if t.is_char_device() {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?;
            return write(&mut f);
        }
        // (opening a FIFO would also wait for its reader)
        if !t.is_file() {
            return Err(refuse("neither a regular file nor a device"));
        }
        // another user's file (made in a shared directory ahead of us): not ours to replace
        #[cfg(unix)]
        if effective_uid().is_some_and(|me| me != m.uid()) {
            return Err(refuse("another user's file"));
        }
    }
    let name = p
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", p.display()))?;
    let mut part_name = std::ffi::OsString::from(".");
    part_name.push(name);
    part_name.push(format!(
        ".{}.{:016x}.part",
        std::process::id(),
        rand::random::<u64>()
    ));
    let part = p.with_file_name(part_name);
    let mut opts = std::fs::OpenOptions::new();
    // a new file (never one planted under this name), private from its first byte
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    let mut f = opts
        .open(&part)
        .with_context(|| format!("creating {}", part.display()))?;
    let written = write(&mut f)
        .and_then(|()| Ok(f.sync_all()?))
        .and_then(|()| {
            std::fs::rename(&part, p).with_context(|| format!("replacing {}", p.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

/// This process's effective user id (Linux; `None` elsewhere).
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    config::process_ids("Uid:").get(1).copied()
}

/// The key of the sealed canary every store holds (`store::open::check_master_key`).
const CANARY: &str = "seal_canary";

/// The records of an export to import into a store whose own canary stays: the export's canary
/// must open with the target's master key (`opens`), else its sealed records would sit beside
/// ones no single key opens (secrets review: an import into a new data dir without the exporting
/// store's master.key overwrote the canary, and the node never started again).
fn without_canary(
    records: Vec<ExportRecord>,
    opens: impl Fn(&[u8]) -> bool,
) -> Result<Vec<ExportRecord>, String> {
    let sys = crate::store::keyspaces::SYSTEM;
    let (canaries, rest): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.keyspace == sys && r.key == CANARY);
    let [canary] = canaries.as_slice() else {
        return Err(format!(
            "the export holds {} seal canaries ({sys}/{CANARY}), not one: not a whole export of an idstack store",
            canaries.len()
        ));
    };
    let sealed = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &canary.value_b64,
    )
    .map_err(|_| "the export's seal canary is not base64".to_string())?;
    if !opens(&sealed) {
        return Err(
            "the export was sealed under another master key than this store's (store.master_key, or the data directory's master.key)"
                .into(),
        );
    }
    Ok(rest)
}

/// `idstack store migrate`: export from one store, import into the other. Refuses a target that
/// already holds data sealed under a different master key: both canaries must open with one key
/// (the configured one, or the source data directory's master.key).
async fn migrate(
    settings: &Settings,
    from: &str,
    to: &str,
    key_prefix: Option<&str>,
) -> anyhow::Result<()> {
    let src = open_spec(settings, from, key_prefix).await?;
    let dst = open_spec(settings, to, key_prefix).await?;
    let sys = crate::store::keyspaces::SYSTEM;
    let src_key = from
        .strip_prefix("sled:")
        .map(|dir| std::path::Path::new(dir).join(crate::store::seal::MASTER_KEY_FILE))
        .filter(|k| k.exists());
    let mut records = src.export_all().await?;
    if let Some(b) = dst.get(sys, CANARY).await? {
        // sealed with random nonces: two canaries under one key differ byte for byte
        let mut sealers = Vec::new();
        if let Some(k) = &settings.master_key {
            sealers.push(crate::store::Sealer::from_secret(k).context("store.master_key")?);
        }
        if let Some(dir) = from.strip_prefix("sled:").filter(|_| src_key.is_some()) {
            sealers.push(
                crate::store::seal::load_or_generate_master_key(std::path::Path::new(dir))?.0,
            );
        }
        let opens = |sealed: &[u8]| {
            sealers.iter().any(|s| {
                s.open(CANARY.as_bytes(), sealed).is_ok() && s.open(CANARY.as_bytes(), &b).is_ok()
            })
        };
        records = without_canary(records, opens).map_err(|e| {
            anyhow::anyhow!("{e}: the target already holds data sealed under another key, or this node's key opens neither; use an empty target (or another key prefix), or set store.master_key to the key of both")
        })?;
    }
    let n = dst.import(records).await?;
    dst.flush().await?;
    eprintln!("migrated {n} records");
    if let Some(key) = src_key {
        eprintln!(
            "note: the data was sealed with the sandbox key {}; give the target's nodes that key (store.master_key_file)",
            key.display()
        );
    }
    Ok(())
}
