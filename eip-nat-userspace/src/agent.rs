//! `eip-nat agent`: load, attach to both interfaces, serve the control
//! socket, and detach on SIGINT/SIGTERM.

use std::{
    ffi::CString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use eip_nat_common::{maps::FLAG_FAST_PATH, Config};
use tokio::{
    io::{unix::AsyncFd, AsyncBufReadExt, AsyncWriteExt, BufReader, Interest},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};

use crate::{
    control::{Request, Response},
    datapath::{mode_name, AttachMode, Datapath, LoadOptions},
    gateway::Gateway,
    sysctl,
};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub public_if: String,
    pub private_if: String,
    pub mode: AttachMode,
    /// Forward translated packets with bpf_fib_lookup + XDP_REDIRECT; when
    /// off, every translated packet goes to the kernel's stack.
    pub fast_path: bool,
    pub socket: PathBuf,
    pub load: LoadOptions,
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("interface {name} does not exist");
    }
    Ok(index)
}

/// Binds the control socket, refusing to steal it from a live agent.
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
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Whoever can write to the socket can re-route public addresses.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve(stream: UnixStream, gateway: Arc<Mutex<Gateway>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                log::debug!("request: {request:?}");
                gateway.lock().expect("gateway lock").handle(request)
            }
            Err(e) => Response::Refused(format!("malformed request: {e}")),
        };
        let mut out = serde_json::to_string(&response).expect("responses serialize");
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    if cfg.public_if == cfg.private_if {
        bail!("--public-if and --private-if must be different interfaces");
    }
    let public = ifindex(&cfg.public_if)?;
    let private = ifindex(&cfg.private_if)?;
    for problem in sysctl::check(Path::new("/proc/sys"), &cfg.public_if, &cfg.private_if) {
        log::warn!("{problem}");
    }

    let mut datapath = Datapath::load(cfg.load)?;
    datapath.set_config(Config {
        public_ifindex: public,
        private_ifindex: private,
        flags: if cfg.fast_path { FLAG_FAST_PATH } else { 0 },
        ..Default::default()
    })?;
    // The fast path forwards between the two interfaces only; anything
    // routed elsewhere falls back to the kernel.
    for ifindex in [public, private] {
        datapath.add_tx_port(ifindex)?;
    }
    match datapath.logger() {
        Ok(logger) => {
            // SAFETY: the logger owns its ring buffer's fd and keeps it open,
            // unreplaced, for as long as the AsyncFd that owns the logger.
            let mut logger =
                unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
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
    for iface in [&cfg.public_if, &cfg.private_if] {
        let mode = datapath.attach(iface, cfg.mode)?;
        log::info!("attached to {iface} ({} XDP)", mode_name(mode));
    }
    if cfg.fast_path {
        log::info!(
            "fast path on: translated packets are forwarded with XDP_REDIRECT (a veth peer \
             needs an XDP program or GRO on to receive them)"
        );
    } else {
        log::info!("fast path off: translated packets are passed to the kernel to route");
    }

    let gateway = Arc::new(Mutex::new(Gateway::new(
        datapath,
        cfg.load.max_associations,
    )));
    let listener = bind(&cfg.socket)?;
    log::info!(
        "serving {} (public {}, private {})",
        cfg.socket.display(),
        cfg.public_if,
        cfg.private_if
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let gw = Arc::clone(&gateway);
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, gw).await {
                            log::debug!("control connection: {e}");
                        }
                    });
                }
                Err(e) => log::warn!("accept: {e}"),
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!(
        "stopping: detaching from {} and {}",
        cfg.public_if,
        cfg.private_if
    );
    drop(listener);
    let _ = fs::remove_file(&cfg.socket);
    // The links are owned by the program; dropping the last reference to the
    // gateway detaches both and frees the maps.
    drop(gateway);
    Ok(())
}
