//! A real `eip-nat agent` process in the gateway namespace, and the CLI
//! talking to it, as an operator would run them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use eip_nat::control::{self, Reply, Request, Response, Stats};

/// The `eip-nat` binary under test: `EIP_NAT_BIN`, else the release build.
pub fn binary() -> PathBuf {
    std::env::var_os("EIP_NAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/eip-nat"))
}

pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent in `ns` and waits until it answers on its socket.
    pub fn start(ns: &str, public_if: &str, private_if: &str, extra: &[&str]) -> Self {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo xtask build`",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("eip-nat-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("eip-nat.sock");
        let log = dir.join("agent.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&bin)
            .arg("--socket")
            .arg(&socket)
            .args([
                "agent",
                "--public-if",
                public_if,
                "--private-if",
                private_if,
            ])
            .args(extra)
            .stdout(Stdio::from(logfile.try_clone().unwrap()))
            .stderr(Stdio::from(logfile))
            .spawn()
            .expect("spawn agent");
        let mut agent = Self { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Response::Ok(_)) = control::call(&agent.socket, &Request::List) {
                break;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited with {status}: {}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
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

    pub fn call(&self, request: Request) -> Reply {
        match control::call(&self.socket, &request).expect("control call") {
            Response::Ok(r) => r,
            other => panic!("{request:?}: {other:?}"),
        }
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
