//! Where the work runs. On a veth a frame is delivered in the sender's
//! softirq, so by default generator, gateway and sink share the
//! generator's CPU. Threaded NAPI on the receiving veth ends moves the
//! gateway's and the sink's receive processing into kernel threads, which
//! can be pinned to another CPU; their run time is then the gateway's (and
//! the sink's) own cost, read directly.

use integration_tests::netns::{ns_sh, End};
use serde::Serialize;

use crate::topology::Rig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Placement {
    /// Everything on [`GENERATOR_CPU`].
    OneCore,
    /// The generator on [`GENERATOR_CPU`], the gateway's and the sink's
    /// receive processing on [`GATEWAY_CPU`].
    OwnCpu,
}

impl Placement {
    pub const ALL: [Placement; 2] = [Self::OneCore, Self::OwnCpu];

    pub fn key(self) -> &'static str {
        match self {
            Self::OneCore => "one-core",
            Self::OwnCpu => "own-cpu",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::OneCore => "one core",
            Self::OwnCpu => "gateway on its own CPU",
        }
    }
}

pub const GENERATOR_CPU: usize = 0;
pub const GATEWAY_CPU: usize = 1;

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins thread or process `pid` (0: the caller) to `cpu`.
fn pin(pid: libc::pid_t, cpu: usize) {
    let set = cpu_set(cpu);
    // SAFETY: the set is valid for the size passed.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "pinning {pid} to CPU {cpu}: {err}");
    assert_pinned(pid, cpu);
}

/// Panics unless `pid` may run on `cpu` alone.
fn assert_pinned(pid: libc::pid_t, cpu: usize) {
    let want = cpu_set(cpu);
    // SAFETY: `got` is valid for the size passed; CPU_EQUAL only reads.
    let same = unsafe {
        let mut got: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(pid, std::mem::size_of_val(&got), &mut got);
        rc == 0 && libc::CPU_EQUAL(&want, &got)
    };
    assert!(same, "{pid} is not pinned to CPU {cpu} alone");
}

/// Makes `pid` a real-time thread (SCHED_FIFO at `priority`): the machine
/// may be shared, and a compiler on the gateway's CPU would otherwise keep
/// a woken NAPI thread waiting for the rest of its time slice while the
/// ring in front of it overflows. The kernel's real-time throttling still
/// leaves 5 % of the CPU to everything else.
fn real_time(pid: libc::pid_t, priority: i32) {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is valid for the call.
    let (rc, policy) = unsafe {
        (
            libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param),
            libc::sched_getscheduler(pid),
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 && policy == libc::SCHED_FIFO,
        "SCHED_FIFO for {pid}: {err}"
    );
}

/// Pins the calling thread to `cpu`; it runs there on return.
pub fn pin_self(cpu: usize) {
    pin(0, cpu);
    // SAFETY: no preconditions.
    let now = unsafe { libc::sched_getcpu() };
    assert_eq!(now, cpu as i32, "still on CPU {now} after pinning to {cpu}");
}

/// Every NAPI kernel thread: (pid, name).
fn napi_threads() -> Vec<(libc::pid_t, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let pid: libc::pid_t = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim_end();
            comm.starts_with("napi/").then(|| (pid, comm.to_string()))
        })
        .collect()
}

/// One interface's NAPI kernel thread, pinned to a CPU.
#[derive(Debug)]
struct NapiThread {
    pid: libc::pid_t,
    name: String,
}

impl NapiThread {
    /// Turns threaded NAPI on for `end` (a veth with one receive queue, so
    /// one thread, `napi/<ifname>-<napi id>`), and pins the new thread to
    /// `cpu`, real-time at `priority` if given.
    fn start(end: &End, cpu: usize, priority: Option<i32>) -> Self {
        let before = napi_threads();
        let sysfs = format!("/sys/class/net/{}/threaded", end.ifname);
        ns_sh(&end.ns, &["sh", "-c", &format!("echo 1 > {sysfs}")]);
        let prefix = format!("napi/{}-", end.ifname);
        let mine: Vec<_> = napi_threads()
            .into_iter()
            .filter(|(pid, name)| name.starts_with(&prefix) && !before.iter().any(|b| b.0 == *pid))
            .collect();
        let [(pid, name)] = &mine[..] else {
            panic!(
                "threaded NAPI on {}: expected one new {prefix}* thread, found {mine:?}",
                end.ifname
            );
        };
        pin(*pid, cpu);
        if let Some(priority) = priority {
            real_time(*pid, priority);
        }
        Self {
            pid: *pid,
            name: name.clone(),
        }
    }

    /// Its CPU time so far, in ns (/proc/<pid>/schedstat, first field).
    fn runtime_ns(&self) -> u64 {
        self.check_alive();
        let s = std::fs::read_to_string(format!("/proc/{}/schedstat", self.pid)).unwrap();
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The CPU it ran on last (/proc/<pid>/stat, field 39).
    fn last_cpu(&self) -> usize {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // Fields after the name, which is in parentheses, from field 3 on.
        let after = &s[s.rfind(')').unwrap() + 2..];
        after
            .split_whitespace()
            .nth(39 - 3)
            .unwrap()
            .parse()
            .unwrap()
    }

    fn check_alive(&self) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        assert_eq!(
            comm.trim_end(),
            self.name,
            "NAPI thread {} is gone",
            self.name
        );
    }
}

/// The gateway on [`GATEWAY_CPU`]: threaded NAPI on the gateway's public
/// end (where its XDP program runs) and on the sink's end, both threads
/// pinned there. On the direct rig the sink is the only receiver. With the
/// looping generator, its receive processing (where it writes the next
/// flow) is threaded too and pinned to [`GENERATOR_CPU`], as the
/// live-frame generator's thread is.
pub struct OwnCpu {
    gateway: Option<NapiThread>,
    sink: NapiThread,
    _generator: Option<NapiThread>,
}

/// CPU time at one instant, for [`OwnCpu::cost`].
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    gateway_ns: u64,
    sink_ns: u64,
    /// Busy ticks of [`GATEWAY_CPU`] (user, nice, system, irq, softirq).
    cpu_ticks: u64,
}

/// Per delivered frame, over one measurement window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Cost {
    /// The gateway's NAPI thread: its whole receive path, XDP program and
    /// hand-over to the sink; none on the direct rig.
    pub gateway_ns: Option<f64>,
    pub sink_ns: f64,
    /// All of [`GATEWAY_CPU`]'s busy time, whatever ran there.
    pub cpu_ns: f64,
}

impl OwnCpu {
    pub fn place(rig: &Rig, looping: bool) -> Self {
        assert!(
            std::thread::available_parallelism().map_or(0, |n| n.get()) > GATEWAY_CPU,
            "the gateway needs a CPU of its own: CPU {GATEWAY_CPU} is not available"
        );
        Self {
            // The sink above the gateway: a real-time thread that always
            // has work runs until it sleeps, and the gateway's would starve
            // the sink of the very frames it hands over.
            gateway: rig
                .has_gateway()
                .then(|| NapiThread::start(&rig.gw_public, GATEWAY_CPU, Some(50))),
            sink: NapiThread::start(&rig.sink, GATEWAY_CPU, Some(51)),
            _generator: looping.then(|| NapiThread::start(&rig.gen_ret, GENERATOR_CPU, None)),
        }
    }

    pub fn times(&self) -> CpuTimes {
        CpuTimes {
            gateway_ns: self.gateway.as_ref().map_or(0, NapiThread::runtime_ns),
            sink_ns: self.sink.runtime_ns(),
            cpu_ticks: cpu_busy_ticks(GATEWAY_CPU),
        }
    }

    /// The cost per frame between two [`Self::times`], after checking that
    /// the work really ran where it was put: each thread still there,
    /// still pinned, last run on [`GATEWAY_CPU`], and busy in between.
    pub fn cost(&self, t0: CpuTimes, t1: CpuTimes, frames: u64) -> Cost {
        for t in self.gateway.iter().chain([&self.sink]) {
            t.check_alive();
            assert_pinned(t.pid, GATEWAY_CPU);
            assert_eq!(t.last_cpu(), GATEWAY_CPU, "{} ran elsewhere", t.name);
        }
        assert!(t1.sink_ns > t0.sink_ns, "{} did no work", self.sink.name);
        assert!(
            self.gateway.is_none() || t1.gateway_ns > t0.gateway_ns,
            "the gateway's NAPI thread did no work"
        );
        let per_frame = |ns: u64| ns as f64 / frames.max(1) as f64;
        Cost {
            gateway_ns: self
                .gateway
                .as_ref()
                .map(|_| per_frame(t1.gateway_ns - t0.gateway_ns)),
            sink_ns: per_frame(t1.sink_ns - t0.sink_ns),
            cpu_ns: per_frame((t1.cpu_ticks - t0.cpu_ticks) * ns_per_tick()),
        }
    }
}

fn ns_per_tick() -> u64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / hz as u64
}

/// Busy ticks of `cpu` so far, from /proc/stat.
fn cpu_busy_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))
        .unwrap_or_else(|| panic!("no {name} in /proc/stat"));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq …
    f[0] + f[1] + f[2] + f[5] + f[6]
}
