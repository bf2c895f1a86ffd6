//! Command line: `serve | healthcheck | config print | store export|import|migrate | admin-token`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "idstack",
    about = "Identity server stack: OpenID4VCI issuer, OpenID4VP verifier, cloud wallet, DIDComm mediator"
)]
pub struct Cli {
    /// Config file (default: ./config.toml when present).
    #[arg(long, short = 'c', global = true, env = "IDSTACK_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server with the selected roles.
    Serve(ServeArgs),
    /// Probe a running node's health endpoint; exit 0 when healthy (for container HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Store tools (the server must not be running on the same data dir).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print the sandbox admin token generated on first start.
    AdminToken(ServeArgs),
    /// Load test a running node (or a balancer) with simulated holders.
    Load(crate::load::LoadArgs),
    /// A holder agent speaking the Aries Akrida agent.js protocol on stdin/stdout.
    Agent {
        /// Speak the protocol on stdin/stdout (the only transport).
        #[arg(long)]
        stdio: bool,
    },
}

/// Overrides shared by `serve` and the commands that read the effective config.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// Roles to run: `all` or a comma-separated list (issuer,verifier,wallet,mediator).
    #[arg(long = "role", value_name = "ROLES")]
    pub roles: Option<String>,
    /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    pub bind: Option<String>,
    /// Base URL handed to wallets (the balancer's address in a cluster).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Write `{"http": addr, "public_url": url}` here once the node listens (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Run in cluster mode (needs the `cluster` feature and cluster.secret).
    #[arg(long)]
    pub cluster: bool,
    /// Cluster node id.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Gossip (UDP) address of this node.
    #[arg(long)]
    pub gossip_addr: Option<String>,
    /// Internal RPC address of this node.
    #[arg(long)]
    pub rpc_addr: Option<String>,
    /// Comma-separated gossip addresses of seed nodes.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Cluster id: nodes only join peers with the same id.
    #[arg(long)]
    pub cluster_id: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Pretty,
    Json,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Base URL of the node (default: from server.bind).
    #[arg(long)]
    pub url: Option<String>,
    /// Which probe to call.
    #[arg(long, value_enum, default_value = "ready")]
    pub probe: Probe,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Probe {
    Live,
    Ready,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (all layers applied) with secrets redacted.
    Print(ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every live record as JSON lines (sealed values stay sealed).
    Export {
        #[command(flatten)]
        args: ServeArgs,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read JSON lines written by `export` into the store.
    Import {
        #[command(flatten)]
        args: ServeArgs,
        /// Input file (default: stdin).
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Copy every live record from one store into another, e.g. a single node's sled data into
    /// Redis: `store migrate --from sled:./data --to redis://10.0.0.5:6379`. Values stay sealed,
    /// so the nodes on the target need the source's master key. Stop the nodes first.
    Migrate {
        #[command(flatten)]
        args: ServeArgs,
        /// Source: `sled:DATA_DIR`, or `redis://…` / `rediss://…` (comma-separated cluster nodes).
        #[arg(long)]
        from: String,
        /// Target, in the same forms as --from.
        #[arg(long)]
        to: String,
        /// Key prefix on a Redis side (default: store.redis.key_prefix).
        #[arg(long)]
        key_prefix: Option<String>,
    },
}

impl ServeArgs {
    /// The CLI layer of the config, as dotted keys.
    pub fn overrides(&self) -> Vec<(&'static str, toml::Value)> {
        use toml::Value::{Boolean, String as S};
        let mut v = Vec::new();
        if let Some(r) = &self.roles {
            v.push(("server.roles", S(r.clone())));
        }
        if let Some(b) = &self.bind {
            v.push(("server.bind", S(b.clone())));
        }
        if let Some(u) = &self.public_url {
            v.push(("server.public_url", S(u.clone())));
        }
        if let Some(d) = &self.data_dir {
            v.push(("store.path", S(d.display().to_string())));
        }
        if let Some(f) = self.log_format {
            let f = match f {
                LogFormatArg::Pretty => "pretty",
                LogFormatArg::Json => "json",
            };
            v.push(("log.format", S(f.into())));
        }
        if self.cluster {
            v.push(("cluster.enabled", Boolean(true)));
        }
        if let Some(n) = &self.node_id {
            v.push(("cluster.node_id", S(n.clone())));
        }
        if let Some(g) = &self.gossip_addr {
            v.push(("cluster.gossip_addr", S(g.clone())));
        }
        if let Some(r) = &self.rpc_addr {
            v.push(("cluster.rpc_addr", S(r.clone())));
        }
        if let Some(s) = &self.seeds {
            v.push(("cluster.seeds", S(s.clone())));
        }
        if let Some(c) = &self.cluster_id {
            v.push(("cluster.id", S(c.clone())));
        }
        v
    }
}

/// `idstack <version> (features: ...)`.
pub fn version_string() -> String {
    format!(
        "{} (features: {})",
        env!("CARGO_PKG_VERSION"),
        crate::role::compiled_features().join(", ")
    )
}
