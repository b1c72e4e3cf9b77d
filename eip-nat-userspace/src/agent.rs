//! `eip-nat agent`: reconcile the pinned datapath with the stored desired
//! state, attach (or take over the attachment), serve the API, and on
//! SIGINT/SIGTERM leave the datapath running for the next agent (or remove
//! it, with `detach_on_exit`).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use std::future::IntoFuture;

use anyhow::{bail, Context, Result};
use eip_nat_common::{
    maps::{IcmpConfig, FLAG_ARP_ACTIVE, FLAG_FAST_PATH, FLAG_STANDBY},
    Config,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    net::{TcpListener, UnixListener},
    signal::unix::{signal, SignalKind},
};

use crate::{
    config::AgentConfig,
    datapath::{mode_name, Attached, Datapath, LoadOptions},
    fleet::{self, Etcd},
    gateway::Gateway,
    logging::LogControl,
    metrics::{self, Metrics},
    reads::Reads,
    routes::{self, Routes},
    server,
    status::{Phase, Status},
    store::Store,
    sysctl,
    tracer::Tracer,
    writer,
};

/// The datapath's own ICMP errors, per CPU: the kernel's defaults for its
/// own (net.ipv4.icmp_msgs_per_sec, icmp_msgs_burst).
const ICMP_ERRORS_PER_SEC: u64 = 1000;
const ICMP_ERRORS_BURST: u64 = 50;

/// `statfs(2)` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Where the maps and links live under the bpffs directory.
pub fn maps_dir(bpffs: &Path) -> std::path::PathBuf {
    bpffs.join("maps")
}

pub fn link_pin(bpffs: &Path, iface: &str) -> std::path::PathBuf {
    bpffs.join("links").join(format!("xdp-{iface}"))
}

/// Creates `dir` (0700) and checks it is on a bpffs: pins anywhere else
/// fail, and a bpffs mounted in a private mount namespace (`ip netns exec`
/// remounts /sys) would silently lose them when the agent exits.
fn bpffs_dir(dir: &Path) -> Result<()> {
    for d in [dir.to_path_buf(), maps_dir(dir), dir.join("links")] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statfs {}", dir.display()));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpf filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose \
             another bpffs_dir",
            dir.display()
        );
    }
    Ok(())
}

/// Binds the control socket (0600), refusing to steal it from a live agent.
fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is already serving {}; stop it first",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // Created with umask 077 so that no one else can connect even for the
    // instant before chmod.
    // SAFETY: umask(2) only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    // Whoever can write to the socket can re-route public addresses.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Unpins the links of interfaces the agent no longer serves (the
/// configuration changed), which detaches the program from them.
fn remove_stale_links(cfg: &AgentConfig) -> Result<()> {
    let ours = [&cfg.public_if, &cfg.private_if].map(|i| link_pin(&cfg.bpffs_dir, i));
    for e in fs::read_dir(cfg.bpffs_dir.join("links"))? {
        let path = e?.path();
        if !ours.contains(&path) {
            log::warn!(
                "detaching from an interface no longer configured ({})",
                path.display()
            );
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes everything the agent installed: the pinned links (which
/// detaches the program), the pinned maps, and its routes. The stored
/// desired state stays, so a new agent puts it all back.
pub fn teardown(bpffs: &Path) -> Result<()> {
    for sub in ["links", "maps"] {
        let dir = bpffs.join(sub);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if bpffs.exists() {
        fs::remove_dir(bpffs).with_context(|| format!("removing {}", bpffs.display()))?;
    }
    let mut routes = Routes::open()?;
    for addr in routes.list()?.into_keys() {
        routes.delete(addr)?;
    }
    Ok(())
}

fn spawn_logger(datapath: &mut Datapath) {
    match datapath.logger() {
        Ok(logger) => {
            // SAFETY: the logger owns its ring buffer's fd and keeps it open,
            // unreplaced, for as long as the AsyncFd that owns the logger.
            let Ok(mut logger) =
                (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
            else {
                return;
            };
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = logger.readable_mut().await else {
                        break;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => log::warn!("datapath log lines will not be shown: {e}"),
    }
}

/// The API's Unix socket, removed when the agent stops (or fails to start)
/// after binding it.
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Reads the TCP listener's token, which must be long enough to guess at.
fn read_token(token_file: &Path) -> Result<String> {
    let token = fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?
        .trim()
        .to_string();
    if token.len() < 16 {
        bail!(
            "the token in {} is shorter than 16 bytes",
            token_file.display()
        );
    }
    Ok(token)
}

/// The MAC address of interface `name` (the ARP responder's sender).
fn interface_mac(name: &str) -> Result<[u8; 6]> {
    let path = Path::new("/sys/class/net").join(name).join("address");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        let part = parts.next().unwrap_or_default();
        *b = u8::from_str_radix(part, 16)
            .with_context(|| format!("{} is no MAC address: {text:?}", path.display()))?;
    }
    Ok(mac)
}

/// Runs the agent; `log`, when given, lets the API change the log's filter.
pub async fn run(cfg: AgentConfig, log: Option<LogControl>) -> Result<()> {
    // Everything that can refuse the start is checked first: an agent that
    // refuses (another agent's socket, a new store over a serving datapath,
    // a missing interface, a bad token) leaves the running gateway, its
    // pinned maps, links and routes, exactly as it was.
    let ifindex = |name: &str| {
        routes::ifindex(name).with_context(|| format!("interface {name} does not exist"))
    };
    let public = ifindex(&cfg.public_if)?;
    let private = ifindex(&cfg.private_if)?;
    let mut problems = sysctl::check(Path::new("/proc/sys"), &cfg.public_if, &cfg.private_if);
    if cfg.standby.is_some() {
        problems.extend(sysctl::check_standby(
            Path::new("/proc/sys"),
            &cfg.public_if,
        ));
    }
    for problem in problems {
        log::warn!("{problem}");
    }
    // The gateway's own ICMP errors (time exceeded, fragmentation needed)
    // are built by the datapath from the untranslated packet, from the
    // gateway's address on the side they go back to.
    let source = |ifindex: u32, name: &str| -> Result<[u8; 4]> {
        match routes::interface_address(ifindex)? {
            Some(a) => Ok(a.octets()),
            None => {
                log::warn!("{name} has no IPv4 address: its ICMP errors are left to the kernel");
                Ok([0; 4])
            }
        }
    };
    let icmp = IcmpConfig {
        public_addr: source(public, &cfg.public_if)?,
        private_addr: source(private, &cfg.private_if)?,
        interval_ns: 1_000_000_000 / ICMP_ERRORS_PER_SEC,
        burst_ns: 1_000_000_000 / ICMP_ERRORS_PER_SEC * ICMP_ERRORS_BURST,
    };
    let listener = bind(&cfg.socket)?;
    let socket_file = SocketFile(cfg.socket.clone());
    let tcp_listener = match (cfg.tcp_listen, &cfg.token_file) {
        (Some(addr), Some(token_file)) => {
            let token = read_token(token_file)?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            Some((addr, listener, token))
        }
        _ => None,
    };
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some((
            addr,
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (metrics_listen)"))?,
        )),
        None => None,
    };
    bpffs_dir(&cfg.bpffs_dir)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let store = Store::open(&cfg.state_dir)?;
    // The fleet's shared store: the local one above is its copy.
    let etcd = match &cfg.etcd {
        Some(e) => Some(Arc::new(Etcd::new(e, tokio::runtime::Handle::current())?)),
        None => None,
    };
    // Opens the pinned maps (creating them if there are none), writes none.
    let mut datapath = Datapath::load(LoadOptions {
        max_associations: cfg.limits.max_associations,
        kernel_log_level: log::max_level(),
        pin_maps: Some(maps_dir(&cfg.bpffs_dir)),
    })?;
    spawn_logger(&mut datapath);
    // Active/standby: the role's task owns the ARP responder's settings.
    let arp = match &cfg.standby {
        Some(_) => Some((
            datapath
                .take_arp_config()
                .context("the ARP responder's map")?,
            interface_mac(&cfg.public_if)?,
        )),
        None => None,
    };
    let routes = Routes::open()?;
    // Subscribed before the tables are read, so no change falls between.
    let monitor = crate::monitor::subscribe().context("subscribing to rtnetlink")?;
    // Readers are answered from here on, while the writer loads the state
    // and reconciles (a million associations take seconds): from the
    // store's committed snapshot and the counters, with the progress.
    let status = Arc::new(Status::new(
        store.generation()?,
        datapath.config()?.generation,
    ));
    let reads = Reads::new(store.reader(), datapath.counters(), Arc::clone(&status));
    let metrics = Arc::new(Metrics::new(
        reads.clone(),
        metrics::Options {
            max_associations: cfg.limits.max_associations,
            top_eips: cfg.metrics_top_eips,
        },
    ));
    let (writer, requests) = writer::channel();
    let tracer = match datapath.take_trace_events() {
        Some(ring) => Some(Tracer::start(ring, writer.clone())?),
        None => None,
    };
    let shared = server::Shared {
        writer: writer.clone(),
        reads,
        tracer,
        metrics: Arc::clone(&metrics),
        log,
    };
    let monitor = monitor.follow(writer.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let role = match (&cfg.standby, &cfg.etcd, &etcd, arp) {
        (Some(standby), Some(etcd_cfg), Some(etcd), Some((arp, mac))) => {
            Some(crate::standby::Role {
                etcd: Arc::clone(etcd),
                cfg: standby.clone(),
                key: crate::standby::leader_key(&etcd_cfg.prefix, &standby.group),
                writer: writer.clone(),
                status: Arc::clone(&status),
                arp,
                public_ifindex: public,
                mac,
                stop: stop_rx.clone(),
            })
        }
        _ => None,
    };
    // Queued until the writer serves; what it reports before the start's
    // own catch-up is skipped as already taken.
    let follower = etcd.as_ref().map(|etcd| {
        tokio::spawn(fleet::follow(
            Arc::clone(etcd),
            writer.clone(),
            Arc::clone(&status),
        ))
    });

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let unix = tokio::spawn(
        axum::serve(listener, server::router(shared.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    log::info!("serving the API on {}", cfg.socket.display());
    let tcp = tcp_listener.map(|(addr, listener, token)| {
        log::info!("serving the API on tcp://{addr} (token required)");
        let router = server::router_with_token(shared.clone(), Arc::new(token));
        tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        )
    });
    let metrics_server = metrics_listener.map(|(addr, listener)| {
        log::info!("serving metrics on http://{addr}/metrics");
        tokio::spawn(
            axum::serve(listener, server::metrics_router(metrics))
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        )
    });
    drop(shared);

    // The writer thread starts the gateway, then serves the writes.
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let start_cfg = cfg.clone();
    let writer_thread = std::thread::Builder::new()
        .name("eip-nat-writer".into())
        .spawn(move || {
            let start = Start {
                cfg: &start_cfg,
                public,
                private,
                icmp,
                etcd,
            };
            match start.run(store, datapath, routes, status) {
                Ok(gateway) => {
                    let _ = started_tx.send(Ok(()));
                    writer::serve(gateway, requests);
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
        })?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let failed = tokio::select! {
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
        started = started => match started {
            Ok(Ok(())) => {
                // Campaigns once the datapath is attached with the tables.
                let role = role.map(|r| tokio::spawn(r.run()));
                tokio::select! {
                    _ = sigint.recv() => {},
                    _ = sigterm.recv() => {},
                }
                // An active gateway hands over before the writer goes.
                if let Some(role) = role {
                    let _ = stop_tx.send(true);
                    if tokio::time::timeout(std::time::Duration::from_secs(3), role)
                        .await
                        .is_err()
                    {
                        log::warn!("stopping: the active/standby role did not finish in 3 s");
                    }
                }
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(anyhow::anyhow!("the writer thread stopped while starting")),
        },
    };
    let _ = stop_tx.send(true);
    let _ = unix.await;
    for server in tcp.into_iter().chain(metrics_server) {
        let _ = server.await;
    }
    drop(socket_file);
    // With every sender gone, the writer finishes what it holds and stops;
    // dropping the gateway closes this process's descriptors, and the
    // pinned links and maps keep the datapath running without it.
    monitor.abort();
    let _ = monitor.await;
    if let Some(follower) = follower {
        follower.abort();
        let _ = follower.await;
    }
    drop(writer);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    if let Some(e) = failed {
        return Err(e);
    }
    if cfg.detach_on_exit {
        log::info!("stopping: removing the datapath and its routes");
        teardown(&cfg.bpffs_dir)?;
    } else {
        log::info!(
            "stopping: the datapath keeps running (pinned under {}); `eip-nat teardown` removes it",
            cfg.bpffs_dir.display()
        );
    }
    Ok(())
}

/// The start, on the writer thread: every check first (an agent refused
/// here has changed nothing live), then the configuration, the reconcile
/// and the attachment.
struct Start<'a> {
    cfg: &'a AgentConfig,
    public: u32,
    private: u32,
    icmp: IcmpConfig,
    /// The fleet's shared store, if any.
    etcd: Option<Arc<Etcd>>,
}

impl Start<'_> {
    fn run(
        self,
        store: Store,
        datapath: Datapath,
        routes: Routes,
        status: Arc<Status>,
    ) -> Result<Gateway> {
        let Self {
            cfg,
            public,
            private,
            icmp,
            etcd,
        } = self;
        // Before anything is compared with the datapath: a gateway that was
        // down takes the fleet's state first.
        let renewed = match &etcd {
            Some(etcd) => fleet::catch_up_local(&store, cfg.limits, etcd),
            None => Vec::new(),
        };
        status.set_generation(store.generation()?);
        let mut opening = Gateway::prepare(store, datapath, Some(routes), cfg.limits, status)?;

        // Checked: from here on the agent changes the live gateway.
        let datapath = opening.datapath_mut();
        // Associations made while this gateway was down start from zero.
        datapath.reset_eip_counters(&renewed)?;
        // Keep the generation a previous agent recorded until the reconcile
        // has made it true for this one.
        let previous = datapath.config()?;
        // Active/standby: the previous agent's role stays until this one's
        // campaign decides (its datapath answers no ARP before that: a new
        // program's deadline is 0); otherwise no role.
        let role = match cfg.standby {
            Some(_) => previous.flags & (FLAG_ARP_ACTIVE | FLAG_STANDBY),
            None => 0,
        };
        datapath.set_config(Config {
            public_ifindex: public,
            private_ifindex: private,
            flags: role | if cfg.fast_path { FLAG_FAST_PATH } else { 0 },
            reserved: 0,
            generation: previous.generation,
        })?;
        datapath.set_icmp_config(icmp)?;
        // The fast path forwards between the two interfaces only; anything
        // routed elsewhere falls back to the kernel.
        for ifindex in [public, private] {
            datapath.add_tx_port(ifindex)?;
        }
        let (mut gateway, report) = opening.open()?;
        // Before the program is attached: the public side reaches nothing
        // but the EIPs and what this lists.
        gateway.set_routed_prefixes(cfg.routed_prefixes.clone())?;
        let generation = gateway.generation().generation;
        log::info!(
            "desired state: generation {generation}, {} ENIs, {} associations; reconciled: \
             {} entries written, {} removed, {} routes written, {} removed",
            gateway.state().enis().count(),
            gateway.state().associations().count(),
            report.entries_written,
            report.entries_removed,
            report.routes_written,
            report.routes_removed
        );
        if report.routes_conflicting > 0 {
            log::warn!(
                "{} routes left to their owners: another's route to the same address is in place",
                report.routes_conflicting
            );
        }
        // Attach last: by now the maps hold the whole desired state, so the
        // program taking over a pinned link sees the same tables as the one
        // it replaces.
        gateway.status().phase(Phase::Attaching, 2);
        for iface in [&cfg.public_if, &cfg.private_if] {
            let pin = link_pin(&cfg.bpffs_dir, iface);
            let attached = gateway
                .datapath_mut()
                .attach_pinned(iface, cfg.xdp_mode, &pin)?;
            match attached {
                Attached::New(mode) => log::info!("attached to {iface} ({} XDP)", mode_name(mode)),
                Attached::Replaced => {
                    log::info!("took over the program on {iface} (atomic replace)")
                }
            }
            gateway.status().step();
        }
        remove_stale_links(cfg)?;
        if let Some(etcd) = etcd {
            gateway.share(etcd);
        }
        if cfg.fast_path {
            log::info!(
                "fast path on: translated packets are forwarded with XDP_REDIRECT (a veth peer \
                 needs an XDP program or GRO on to receive them)"
            );
        } else {
            log::info!("fast path off: translated packets are passed to the kernel to route");
        }
        gateway.status().done();
        log::info!("serving writes");
        Ok(gateway)
    }
}
