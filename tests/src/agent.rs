//! A real `eip-nat agent` process in the gateway namespace, and the CLI
//! talking to it, as an operator would run them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use eip_nat::{api::Stats, client::Client};

/// Where one agent keeps its state: a directory with its socket, its store
/// and a bpffs of its own. The bpffs is mounted here, in the test's mount
/// namespace, because `ip netns exec` remounts /sys and so hides
/// /sys/fs/bpf; pins made there would die with the agent. Unmounted (and
/// so every pin in it freed) on drop.
pub struct AgentHome {
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl AgentHome {
    pub fn new(name: &str) -> std::sync::Arc<Self> {
        let dir = std::env::temp_dir().join(format!("eip-nat-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let bpffs = dir.join("bpffs");
        let state = dir.join("state");
        std::fs::create_dir_all(&bpffs).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a bpffs at {}", bpffs.display());
        std::sync::Arc::new(Self {
            socket: dir.join("eip-nat.sock"),
            bpffs: bpffs.join("eip-nat"),
            state,
            dir,
        })
    }
}

impl AgentHome {
    /// The map `name` the agent pinned here, opened from outside it.
    pub fn pinned(&self, name: &str) -> aya::maps::MapData {
        let path = self.bpffs.join("maps").join(name);
        aya::maps::MapData::from_pin(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    }

    /// Runs `eip-nat teardown` on this home's bpffs, in `ns`.
    pub fn teardown(&self, ns: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary())
            .args(["teardown", "--bpffs-dir"])
            .arg(&self.bpffs)
            .output()
            .expect("run eip-nat teardown")
    }
}

impl Drop for AgentHome {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.join("bpffs"))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `eip-nat` binary under test: `EIP_NAT_BIN`, else the release build.
pub fn binary() -> PathBuf {
    std::env::var_os("EIP_NAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/eip-nat"))
}

pub struct Agent {
    child: Child,
    pub home: std::sync::Arc<AgentHome>,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Namespace, public and private interface.
    started_with: (String, String, String),
}

impl Agent {
    /// Starts the agent in `ns`, with a home of its own, and waits until it
    /// answers on its socket. It removes the datapath when it stops.
    pub fn start(ns: &str, public_if: &str, private_if: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--detach-on-exit"];
        args.extend_from_slice(extra);
        Self::start_in(AgentHome::new(ns), ns, public_if, private_if, &args)
    }

    /// [`Agent::start`] on the gateway of a topology.
    pub fn on(t: &impl crate::netns::WithGateway, extra: &[&str]) -> Self {
        let (public, private) = t.gateway();
        Self::start(&public.ns, &public.ifname, &private.ifname, extra)
    }

    /// [`Agent::start_in`] on the gateway of a topology.
    pub fn on_in(
        home: &std::sync::Arc<AgentHome>,
        t: &impl crate::netns::WithGateway,
        extra: &[&str],
    ) -> Self {
        let (public, private) = t.gateway();
        Self::start_in(
            home.clone(),
            &public.ns,
            &public.ifname,
            &private.ifname,
            extra,
        )
    }

    /// [`Agent::on`] a topology, holding `n` associations of detached
    /// ENIs ([`crate::detached_nat_pairs`]) loaded in one batch, in
    /// counter slots for the next power of two.
    pub fn with_associations(t: &impl crate::netns::WithGateway, n: u32) -> Self {
        let slots = n.next_power_of_two().to_string();
        let agent = Self::on(t, &["--max-associations", &slots]);
        agent
            .client()
            .batch(&eip_nat::api::Batch {
                events: crate::detached_nat_pairs(n),
                if_generation: None,
            })
            .unwrap();
        agent
    }

    /// Starts an agent in `home`, which an earlier agent may have used:
    /// its store, and its pinned datapath if it left one; returns once it
    /// has reconciled and attached (its API answers before that).
    pub fn start_in(
        home: std::sync::Arc<AgentHome>,
        ns: &str,
        public_if: &str,
        private_if: &str,
        extra: &[&str],
    ) -> Self {
        let mut agent = Self::launch_in(home, ns, public_if, private_if, extra);
        agent.wait_until(Duration::from_secs(20), |g| g.reconcile.is_none());
        agent
    }

    /// Polls the API until `ready` holds of its generation (panics if the
    /// agent exits or `timeout` passes first); returns when it did.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        ready: impl Fn(&eip_nat::api::Generation) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.client().generation().is_ok_and(|g| ready(&g)) {
                return Instant::now();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts an agent as [`Agent::start_in`] does, without waiting.
    pub fn launch_in(
        home: std::sync::Arc<AgentHome>,
        ns: &str,
        public_if: &str,
        private_if: &str,
        extra: &[&str],
    ) -> Self {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo xtask build`",
            bin.display()
        );
        let socket = home.socket.clone();
        let log = home.dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut args: Vec<std::ffi::OsString> = vec!["--socket".into(), socket.clone().into()];
        args.extend(
            [
                "agent",
                "--public-if",
                public_if,
                "--private-if",
                private_if,
                "--state-dir",
            ]
            .map(Into::into),
        );
        args.extend([
            home.state.clone().into(),
            "--bpffs-dir".into(),
            home.bpffs.clone().into(),
        ]);
        args.extend(extra.iter().map(Into::into));
        let child = crate::netns::spawn_in(ns, &bin, args, &log);
        Self {
            child,
            home,
            socket,
            log,
            started_with: (ns.into(), public_if.into(), private_if.into()),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run eip-nat CLI")
    }

    /// Runs the CLI and panics unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "eip-nat {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn stats(&self) -> Stats {
        let json = self.cli_ok(&["stats", "--json"]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats --json: {e}: {json}"))
    }

    /// Namespace, public and private interface, to start a successor.
    pub fn started_with(&self) -> (String, String, String) {
        self.started_with.clone()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Gives `private_ip` a primary ENI (`eni-<ip>`, instance `i-<ip>`)
    /// and associates `eip` with it in NAT mode, through the CLI.
    pub fn nat(&self, eip: &str, private_ip: &str) {
        self.cli_ok(&[
            "eni",
            "create",
            "--eni",
            &format!("eni-{private_ip}"),
            "--kind",
            "primary",
            "--primary-ip",
            private_ip,
            "--instance",
            &format!("i-{private_ip}"),
        ]);
        self.cli_ok(&[
            "associate",
            "--eip",
            eip,
            "--eni",
            &format!("eni-{private_ip}"),
        ]);
    }

    /// A primary ENI `eni` (instance `i-<eni>`) with `private_ip`, and
    /// `eip` associated with it in NAT mode, through the API.
    pub fn primary_nat(&self, eni: &str, private_ip: std::net::Ipv4Addr, eip: std::net::Ipv4Addr) {
        let api = self.client();
        api.event(&eip_nat::model::Event::CreateEni {
            eni: eni.into(),
            kind: eip_nat::model::EniKind::Primary,
            primary_ip: private_ip,
            instance: Some(format!("i-{eni}")),
            location: Default::default(),
        })
        .expect("create the ENI");
        api.event(&eip_nat::model::Event::Associate {
            eip,
            eni: eni.into(),
            private_ip: None,
            mode: eip_nat::model::Mode::Nat,
        })
        .expect("associate");
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // `ip netns exec` execs the agent, so the child pid is the agent.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait agent");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}
