//! The kernel settings a NAT gateway needs, checked at start so a
//! misconfigured host says what is wrong instead of silently dropping.

use std::{fs, path::Path};

/// Reads an integer sysctl under `proc_sys` (normally `/proc/sys`).
fn read(proc_sys: &Path, key: &str) -> Option<i64> {
    fs::read_to_string(proc_sys.join(key))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every problem found, each with the command that fixes it. Empty means
/// the host is ready.
pub fn check(proc_sys: &Path, public_if: &str, private_if: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Translated packets go back to the kernel to be routed (XDP_PASS).
    if read(proc_sys, "net/ipv4/ip_forward") != Some(1) {
        problems.push(
            "net.ipv4.ip_forward is not 1: translated packets will not be routed; \
             run `sysctl -w net.ipv4.ip_forward=1`"
                .to_string(),
        );
    }
    for iface in [public_if, private_if] {
        let key = format!("net/ipv4/conf/{iface}/forwarding");
        if read(proc_sys, &key) == Some(0) {
            problems.push(format!(
                "net.ipv4.conf.{iface}.forwarding is 0: packets arriving on {iface} will not \
                 be routed; run `sysctl -w net.ipv4.conf.{iface}.forwarding=1`"
            ));
        }
    }
    // Outbound packets arrive on the private side with their source already
    // rewritten to a public EIP, whose route points out of the public side:
    // strict reverse-path filtering (RFC 3704 §2.2) drops every one. The
    // kernel applies max(all, interface) (IN_DEV_MAXCONF in inetdevice.h).
    let all = read(proc_sys, "net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let dev = read(proc_sys, &format!("net/ipv4/conf/{private_if}/rp_filter")).unwrap_or(0);
    if all.max(dev) == 1 {
        problems.push(format!(
            "reverse-path filtering is strict on {private_if} (all={all}, {private_if}={dev}): \
             translated outbound packets (source = EIP) will be dropped; run \
             `sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{private_if}.rp_filter=0` \
             (off; loose, 2, works too if the gateway has a route covering the EIPs, such as \
             a default route)"
        ));
    }
    // Hairpin traffic leaves by the interface it came in on; on the slow
    // path the kernel then sends the instance an ICMP redirect (RFC 1812
    // §4.3.3.2) pointing at the other instance, which does not own the EIP.
    // Sent when either all or the interface allows it (IN_DEV_TX_REDIRECTS).
    let redirects = [
        "net/ipv4/conf/all/send_redirects".to_string(),
        format!("net/ipv4/conf/{private_if}/send_redirects"),
    ];
    if redirects.iter().any(|k| read(proc_sys, k) == Some(1)) {
        problems.push(format!(
            "ICMP redirects are on for {private_if}: hairpin traffic (an instance reaching \
             another's EIP) would be redirected to the wrong host; run `sysctl -w \
             net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.{private_if}.send_redirects=0`"
        ));
    }
    problems
}

/// Active/standby on a shared L2: only the active's datapath may answer
/// ARP for the EIPs. With proxy ARP on the public side, a standby's kernel
/// would answer for every address it routes elsewhere, the passthrough EIPs
/// among them (their host routes point at the private side), and pull
/// their traffic to itself. The kernel applies either setting
/// (IN_DEV_PROXY_ARP in inetdevice.h).
pub fn check_standby(proc_sys: &Path, public_if: &str) -> Vec<String> {
    let keys = [
        "net/ipv4/conf/all/proxy_arp".to_string(),
        format!("net/ipv4/conf/{public_if}/proxy_arp"),
    ];
    if keys.iter().any(|k| read(proc_sys, k) == Some(1)) {
        vec![format!(
            "proxy ARP is on for {public_if}: a standby's kernel would answer ARP for EIPs it \
             routes to the private side; run `sysctl -w net.ipv4.conf.all.proxy_arp=0 \
             net.ipv4.conf.{public_if}.proxy_arp=0`"
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct FakeProc(PathBuf);
    impl FakeProc {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("eip-nat-sysctl-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Self(p)
        }
        fn set(&self, key: &str, v: i64) -> &Self {
            let f = self.0.join(key);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, format!("{v}\n")).unwrap();
            self
        }
    }
    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_ready_host_has_no_problems() {
        let p = FakeProc::new("ready");
        p.set("net/ipv4/ip_forward", 1)
            .set("net/ipv4/conf/all/rp_filter", 0)
            .set("net/ipv4/conf/priv0/rp_filter", 2)
            .set("net/ipv4/conf/pub0/forwarding", 1)
            .set("net/ipv4/conf/priv0/forwarding", 1)
            .set("net/ipv4/conf/all/send_redirects", 0)
            .set("net/ipv4/conf/priv0/send_redirects", 0);
        assert_eq!(check(&p.0, "pub0", "priv0"), Vec::<String>::new());
    }

    #[test]
    fn each_problem_is_named_with_its_fix() {
        let p = FakeProc::new("bad");
        p.set("net/ipv4/ip_forward", 0)
            .set("net/ipv4/conf/all/rp_filter", 1)
            .set("net/ipv4/conf/priv0/rp_filter", 0)
            .set("net/ipv4/conf/pub0/forwarding", 0)
            .set("net/ipv4/conf/all/send_redirects", 0)
            .set("net/ipv4/conf/priv0/send_redirects", 1);
        let problems = check(&p.0, "pub0", "priv0");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("sysctl -w net.ipv4.ip_forward=1"));
        assert!(problems[1].contains("net.ipv4.conf.pub0.forwarding=1"));
        assert!(problems[2].contains("strict on priv0 (all=1, priv0=0)"));
        assert!(problems[3].contains("send_redirects=0"));
    }

    #[test]
    fn proxy_arp_on_a_standby_is_caught() {
        let p = FakeProc::new("proxy");
        p.set("net/ipv4/conf/all/proxy_arp", 0);
        assert_eq!(check_standby(&p.0, "pub0"), Vec::<String>::new());
        p.set("net/ipv4/conf/pub0/proxy_arp", 1);
        let problems = check_standby(&p.0, "pub0");
        assert!(
            problems[0].contains("net.ipv4.conf.pub0.proxy_arp=0"),
            "{problems:?}"
        );
    }

    #[test]
    fn strict_on_the_interface_alone_is_caught() {
        let p = FakeProc::new("dev");
        p.set("net/ipv4/ip_forward", 1)
            .set("net/ipv4/conf/all/rp_filter", 0)
            .set("net/ipv4/conf/priv0/rp_filter", 1);
        assert_eq!(check(&p.0, "pub0", "priv0").len(), 1);
    }
}
