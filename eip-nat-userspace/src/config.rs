//! The agent's configuration: a TOML file (every key optional), with
//! command-line flags taking precedence. `eip-nat agent --print-config`
//! shows the result.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{api::DEFAULT_SOCKET, datapath::AttachMode, model::Limits};

pub const DEFAULT_CONFIG: &str = "/etc/eip-nat/eip-nat.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/eip-nat";
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/eip-nat";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {0}")]
    Read(String, #[source] std::io::Error),
    #[error("{0}")]
    Parse(String, #[source] toml::de::Error),
    #[error("{0} is required (flag or config file)")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// The file's keys; the same names as the flags, with `_` for `-`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub public_if: Option<String>,
    pub private_if: Option<String>,
    pub xdp_mode: Option<AttachMode>,
    pub fast_path: Option<bool>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub bpffs_dir: Option<PathBuf>,
    pub max_associations: Option<u32>,
    pub multi_eip_quota: Option<u32>,
    pub log_level: Option<String>,
    pub detach_on_exit: Option<bool>,
    pub tcp_listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    pub routed_prefixes: Option<Vec<Ipv4Net>>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_top_eips: Option<usize>,
    pub store: Option<StoreKind>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_prefix: Option<String>,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    pub fleet_mode: Option<FleetMode>,
    pub standby_group: Option<String>,
    pub node_name: Option<String>,
    pub lease_ttl_secs: Option<u32>,
}

/// How the gateways of a fleet share the traffic (docs/fleet.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FleetMode {
    /// Every gateway translates what reaches it; a router spreads the
    /// traffic (ECMP). A single gateway is this too.
    #[default]
    ActiveActive,
    /// The gateways of a group share one L2 uplink: one of them, elected
    /// through an etcd lease, answers ARP for the EIPs; the others stand by
    /// with the same tables (`store = "etcd"` only).
    ActiveStandby,
}

/// Active/standby on a shared L2 (`fleet_mode = "active-standby"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StandbyConfig {
    /// The gateways on one L2 segment: one active among them.
    pub group: String,
    /// This gateway's name in the group, unique in it: the leader's
    /// identity in `/v1/generation`.
    pub node: String,
    /// The leadership lease's time to live: how long a gateway that died
    /// holds the EIPs before a standby takes them.
    pub lease_ttl_secs: u32,
}

pub const DEFAULT_STANDBY_GROUP: &str = "default";
pub const DEFAULT_LEASE_TTL_SECS: u32 = 2;

/// Where the desired state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// This gateway's own embedded store (redb, in `state_dir`).
    #[default]
    Redb,
    /// Shared by a fleet of gateways in etcd, with a local copy in
    /// `state_dir` (docs/fleet.md).
    Etcd,
}

/// How to reach the fleet's etcd (`store = "etcd"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key of the desired state is under it.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

pub const DEFAULT_ETCD_PREFIX: &str = "/eip-nat";

impl FileConfig {
    /// Reads `path`; a missing file is an empty config only when it is the
    /// default path (no file is needed when every flag is given).
    pub fn read(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(e) => return Err(ConfigError::Read(path.display().to_string(), e)),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.display().to_string(), e))
    }

    /// `self`, with every key `over` sets replaced.
    pub fn overridden_by(self, over: FileConfig) -> Self {
        macro_rules! pick {
            ($($f:ident),*) => { Self { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            public_if,
            private_if,
            xdp_mode,
            fast_path,
            socket,
            state_dir,
            bpffs_dir,
            max_associations,
            multi_eip_quota,
            log_level,
            detach_on_exit,
            tcp_listen,
            token_file,
            routed_prefixes,
            metrics_listen,
            metrics_top_eips,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_ca_file,
            etcd_cert_file,
            etcd_key_file,
            etcd_user,
            etcd_password_file,
            fleet_mode,
            standby_group,
            node_name,
            lease_ttl_secs
        )
    }
}

/// The configuration in effect, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    pub public_if: String,
    pub private_if: String,
    pub xdp_mode: AttachMode,
    /// Forward translated packets with bpf_fib_lookup + XDP_REDIRECT; when
    /// off, every translated packet goes to the kernel's stack.
    pub fast_path: bool,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    pub limits: Limits,
    pub log_level: String,
    /// Remove the datapath (links, maps, routes) when the agent stops;
    /// by default it stays, serving packets, for the next agent.
    pub detach_on_exit: bool,
    pub tcp_listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// Prefixes the public side may reach unchanged (the kernel routes
    /// them), besides the EIPs and the gateway's own addresses; anything
    /// else from the Internet is dropped (docs/behaviour.md, "What the
    /// public side reaches").
    pub routed_prefixes: Vec<Ipv4Net>,
    /// Also serve `GET /metrics` (only that, read-only, no token) on this
    /// TCP address, for Prometheus.
    pub metrics_listen: Option<SocketAddr>,
    /// Per-EIP series for the N EIPs with the most bytes; 0: every EIP.
    pub metrics_top_eips: usize,
    /// The fleet's shared store; None: this gateway's own (redb).
    pub etcd: Option<EtcdConfig>,
    /// Active/standby on a shared L2; None: active-active.
    pub standby: Option<StandbyConfig>,
}

/// Per-EIP series a scrape shows by default: the 1,000 EIPs with the most
/// bytes (docs/operating.md, "Metrics").
pub const DEFAULT_METRICS_TOP_EIPS: usize = 1000;

impl TryFrom<FileConfig> for AgentConfig {
    type Error = ConfigError;

    fn try_from(f: FileConfig) -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        let cfg = Self {
            public_if: f.public_if.ok_or(ConfigError::Missing("public_if"))?,
            private_if: f.private_if.ok_or(ConfigError::Missing("private_if"))?,
            xdp_mode: f.xdp_mode.unwrap_or_default(),
            fast_path: f.fast_path.unwrap_or(true),
            socket: f.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            state_dir: f.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            bpffs_dir: f.bpffs_dir.unwrap_or_else(|| DEFAULT_BPFFS_DIR.into()),
            limits: Limits {
                max_associations: f.max_associations.unwrap_or(defaults.max_associations),
                multi_eip_quota: f.multi_eip_quota.unwrap_or(defaults.multi_eip_quota),
            },
            log_level: f.log_level.unwrap_or_else(|| "info".into()),
            detach_on_exit: f.detach_on_exit.unwrap_or(false),
            tcp_listen: f.tcp_listen,
            token_file: f.token_file,
            routed_prefixes: f.routed_prefixes.unwrap_or_default(),
            metrics_listen: f.metrics_listen,
            metrics_top_eips: f.metrics_top_eips.unwrap_or(DEFAULT_METRICS_TOP_EIPS),
            etcd: None,
            standby: None,
        };
        let mut cfg = cfg;
        match f.store.unwrap_or_default() {
            StoreKind::Redb => {
                if f.etcd_endpoints.is_some() {
                    return Err(ConfigError::Invalid(
                        "etcd_endpoints is set but store is \"redb\": set store = \"etcd\" to share the state"
                            .into(),
                    ));
                }
            }
            StoreKind::Etcd => {
                let endpoints = f.etcd_endpoints.unwrap_or_default();
                if endpoints.is_empty() {
                    return Err(ConfigError::Missing(
                        "etcd_endpoints (with store = \"etcd\")",
                    ));
                }
                let prefix = f
                    .etcd_prefix
                    .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.into())
                    .trim_end_matches('/')
                    .to_string();
                if prefix.is_empty() {
                    return Err(ConfigError::Invalid(
                        "etcd_prefix must not be empty: the fleet's keys need a prefix of their own"
                            .into(),
                    ));
                }
                if f.etcd_cert_file.is_some() != f.etcd_key_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "etcd_cert_file and etcd_key_file go together (a client certificate)"
                            .into(),
                    ));
                }
                if f.etcd_user.is_some() != f.etcd_password_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "etcd_user and etcd_password_file go together".into(),
                    ));
                }
                cfg.etcd = Some(EtcdConfig {
                    endpoints,
                    prefix,
                    ca_file: f.etcd_ca_file,
                    cert_file: f.etcd_cert_file,
                    key_file: f.etcd_key_file,
                    user: f.etcd_user,
                    password_file: f.etcd_password_file,
                });
            }
        }
        cfg.standby = standby(
            &f.fleet_mode,
            f.standby_group,
            f.node_name,
            f.lease_ttl_secs,
        )?;
        if cfg.standby.is_some() && cfg.etcd.is_none() {
            return Err(ConfigError::Invalid(
                "fleet_mode = \"active-standby\" needs store = \"etcd\": the gateways elect \
                 the active one through an etcd lease"
                    .into(),
            ));
        }
        for p in &cfg.routed_prefixes {
            if p.prefix_len() == 0 {
                return Err(ConfigError::Invalid(format!(
                    "routed_prefixes: {p} would open every address to the Internet; list the \
                     prefixes to route through"
                )));
            }
            if p.network() != p.addr() {
                return Err(ConfigError::Invalid(format!(
                    "routed_prefixes: {p} has host bits set; did you mean {}?",
                    p.trunc()
                )));
            }
        }
        if cfg.public_if == cfg.private_if {
            return Err(ConfigError::Invalid(
                "public_if and private_if must be different interfaces".into(),
            ));
        }
        if cfg.limits.max_associations == 0 || cfg.limits.multi_eip_quota == 0 {
            return Err(ConfigError::Invalid(
                "max_associations and multi_eip_quota must be at least 1".into(),
            ));
        }
        if cfg.tcp_listen.is_some() && cfg.token_file.is_none() {
            return Err(ConfigError::Invalid(
                "tcp_listen needs token_file: the TCP listener only serves requests that carry the token".into(),
            ));
        }
        if let Err(e) = crate::logging::check(&cfg.log_level) {
            return Err(ConfigError::Invalid(format!("log_level: {e}")));
        }
        Ok(cfg)
    }
}

/// The active/standby settings, checked; None in active-active mode.
fn standby(
    mode: &Option<FleetMode>,
    group: Option<String>,
    node: Option<String>,
    ttl: Option<u32>,
) -> Result<Option<StandbyConfig>, ConfigError> {
    if mode.unwrap_or_default() == FleetMode::ActiveActive {
        if group.is_some() || ttl.is_some() {
            return Err(ConfigError::Invalid(
                "standby_group and lease_ttl_secs need fleet_mode = \"active-standby\"".into(),
            ));
        }
        return Ok(None);
    }
    let group = group.unwrap_or_else(|| DEFAULT_STANDBY_GROUP.into());
    if group.is_empty() || group.contains('/') {
        return Err(ConfigError::Invalid(format!(
            "standby_group {group:?}: a non-empty name without '/'"
        )));
    }
    let node = match node {
        Some(n) => n,
        None => hostname()?,
    };
    if node.is_empty() {
        return Err(ConfigError::Invalid("node_name must not be empty".into()));
    }
    let lease_ttl_secs = ttl.unwrap_or(DEFAULT_LEASE_TTL_SECS);
    if lease_ttl_secs == 0 {
        return Err(ConfigError::Invalid(
            "lease_ttl_secs must be at least 1 (etcd counts leases in seconds)".into(),
        ));
    }
    Ok(Some(StandbyConfig {
        group,
        node,
        lease_ttl_secs,
    }))
}

/// This host's name, the default `node_name`.
fn hostname() -> Result<String, ConfigError> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(ConfigError::Invalid(format!(
            "node_name is not set and the host's name is unreadable: {}",
            std::io::Error::last_os_error()
        )));
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            "public_if = \"eth0\"\nprivate_if = \"eth1\"\nmulti_eip_quota = 4\nfast_path = false\n",
        )
        .unwrap();
        let flags = FileConfig {
            private_if: Some("eth2".into()),
            ..Default::default()
        };
        let cfg = AgentConfig::try_from(file.overridden_by(flags)).unwrap();
        assert_eq!(cfg.public_if, "eth0");
        assert_eq!(cfg.private_if, "eth2");
        assert_eq!(cfg.limits.multi_eip_quota, 4);
        assert!(!cfg.fast_path);
        assert_eq!(cfg.state_dir, Path::new(DEFAULT_STATE_DIR));
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let file: FileConfig = toml::from_str(include_str!("../../contrib/eip-nat.toml")).unwrap();
        let cfg = AgentConfig::try_from(file).unwrap();
        let defaults = AgentConfig::try_from(FileConfig {
            public_if: Some("eth0".into()),
            private_if: Some("eth1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg, defaults);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let e = toml::from_str::<FileConfig>("public_iface = \"eth0\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let tcp = FileConfig {
            public_if: Some("a".into()),
            private_if: Some("b".into()),
            tcp_listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        let e = AgentConfig::try_from(tcp).unwrap_err();
        assert!(e.to_string().contains("token_file"), "{e}");
        let e = AgentConfig::try_from(FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("public_if is required"), "{e}");
        for (bad, why) in [
            ("0.0.0.0/0", "every address"),
            ("10.1.2.3/24", "10.1.2.0/24"),
        ] {
            let f: FileConfig = toml::from_str(&format!(
                "public_if = \"a\"\nprivate_if = \"b\"\nrouted_prefixes = [\"{bad}\"]\n"
            ))
            .unwrap();
            let e = AgentConfig::try_from(f).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let base = "public_if = \"a\"\nprivate_if = \"b\"\n";
        for (bad, why) in [
            ("store = \"etcd\"", "etcd_endpoints"),
            (
                "etcd_endpoints = [\"http://127.0.0.1:2379\"]",
                "store = \"etcd\"",
            ),
            (
                "store = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\netcd_user = \"u\"",
                "etcd_password_file",
            ),
        ] {
            let f: FileConfig = toml::from_str(&format!("{base}{bad}\n")).unwrap();
            let e = AgentConfig::try_from(f).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let f: FileConfig = toml::from_str(&format!(
            "{base}store = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\netcd_prefix = \"/x/\"\n"
        ))
        .unwrap();
        let etcd = AgentConfig::try_from(f).unwrap().etcd.unwrap();
        assert_eq!((etcd.endpoints.len(), etcd.prefix.as_str()), (1, "/x"));
        let etcd_base = format!("{base}store = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\n");
        for (text, why) in [
            (
                format!("{base}fleet_mode = \"active-standby\"\n"),
                "store = \"etcd\"",
            ),
            (format!("{etcd_base}lease_ttl_secs = 1\n"), "active-standby"),
            (
                format!("{etcd_base}fleet_mode = \"active-standby\"\nlease_ttl_secs = 0\n"),
                "at least 1",
            ),
            (
                format!("{etcd_base}fleet_mode = \"active-standby\"\nstandby_group = \"a/b\"\n"),
                "without '/'",
            ),
        ] {
            let f: FileConfig = toml::from_str(&text).unwrap();
            let e = AgentConfig::try_from(f).unwrap_err();
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
        let f: FileConfig = toml::from_str(&format!(
            "{etcd_base}fleet_mode = \"active-standby\"\nnode_name = \"gw-a\"\n"
        ))
        .unwrap();
        let standby = AgentConfig::try_from(f).unwrap().standby.unwrap();
        assert_eq!(
            standby,
            StandbyConfig {
                group: DEFAULT_STANDBY_GROUP.into(),
                node: "gw-a".into(),
                lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            }
        );
        let e = toml::from_str::<FileConfig>("routed_prefixes = [\"10.1.2.0/33\"]").unwrap_err();
        assert!(e.to_string().contains("routed_prefixes"), "{e}");
    }
}
