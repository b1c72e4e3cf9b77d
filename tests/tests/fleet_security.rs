//! A fleet on an etcd that wants TLS with client certificates and has
//! authentication on (docs/fleet.md, "Configuration"): the agent's
//! `--etcd-ca-file`, `--etcd-cert-file`, `--etcd-key-file`, `--etcd-user`
//! and `--etcd-password-file` against a real etcd (Debian's
//! `etcd-server`), with a CA and certificates made by the test; an agent
//! with a wrong password, and one without a client certificate, refused.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use eip_nat::{
    api::ErrorKind,
    client::ClientError,
    model::{EniKind, Event, Location, Mode},
};
use integration_tests::{
    agent::{Agent, AgentHome},
    etcd::{translated, Etcd, EtcdTls, Fleet},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

const ROOT_PASSWORD: &str = "root-secret";
const AGENT_USER: &str = "eip-nat";
const AGENT_PASSWORD: &str = "agent-secret";

/// The test's temporary directory (certificates, keys, password files),
/// removed on drop, on success and on panic alike.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("eip-nat-etcd-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA; etcd's server certificate for loopback and `addrs` (where the
/// gateways reach it); a client certificate. Written into `dir`.
fn certificates(dir: &TempDir, addrs: &[Ipv4Addr]) -> EtcdTls {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "eip-nat test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "etcd");
    server
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    for a in addrs {
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(*a)));
    }
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "eip-nat agent");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    EtcdTls {
        ca: dir.write("ca.pem", &ca_cert.pem()),
        server_cert: dir.write("server.pem", &server_cert.pem()),
        server_key: dir.write("server-key.pem", &server_key.serialize_pem()),
        client_cert: dir.write("client.pem", &client_cert.pem()),
        client_key: dir.write("client-key.pem", &client_key.serialize_pem()),
    }
}

/// The agent's TLS and authentication flags: the CA always, the client
/// certificate if `client_cert`, user `AGENT_USER` with `password_file`.
fn security_args(tls: &EtcdTls, client_cert: bool, password_file: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let mut args = vec!["--etcd-ca-file".into(), path(&tls.ca)];
    if client_cert {
        args.extend([
            "--etcd-cert-file".into(),
            path(&tls.client_cert),
            "--etcd-key-file".into(),
            path(&tls.client_key),
        ]);
    }
    args.extend([
        "--etcd-user".into(),
        AGENT_USER.into(),
        "--etcd-password-file".into(),
        path(password_file),
    ]);
    args
}

fn ctl(etcd: &Etcd, args: &[&str]) -> String {
    etcd.ctl(args)
        .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
}

fn start(fleet: &Fleet, i: usize, args: &[String]) -> Agent {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet.start_in_with(AgentHome::new(&fleet.topologies[i].gw_public.ns), i, &args)
}

fn eni(id: &str, ip: Ipv4Addr) -> Event {
    Event::CreateEni {
        eni: id.into(),
        kind: EniKind::Primary,
        primary_ip: ip,
        instance: Some(format!("i-{id}")),
        location: Location::default(),
    }
}

/// An etcd that takes only TLS clients with a certificate of the test's
/// CA and has authentication on; an agent user whose role may read and
/// write the fleet's prefix (which covers `<prefix>-leader/` too). Three
/// gateways: one with everything right, one with a wrong password, one
/// without a client certificate.
#[test]
fn an_agent_with_tls_and_a_user_works_a_wrong_password_or_no_certificate_is_refused() {
    let dir = TempDir::new();
    let mut tls = None;
    let mut fleet = Fleet::new_with(3, 1, |addrs| {
        tls = Some(certificates(&dir, addrs));
        tls.clone()
    });
    let tls = tls.unwrap();
    let prefix = fleet.prefix.clone();

    // Authentication: root (needed to enable it) and the agent's user.
    ctl(
        &fleet.etcd,
        &[
            "user",
            "add",
            "root",
            &format!("--new-user-password={ROOT_PASSWORD}"),
        ],
    );
    ctl(&fleet.etcd, &["role", "add", "root"]);
    ctl(&fleet.etcd, &["user", "grant-role", "root", "root"]);
    ctl(
        &fleet.etcd,
        &[
            "user",
            "add",
            AGENT_USER,
            &format!("--new-user-password={AGENT_PASSWORD}"),
        ],
    );
    ctl(&fleet.etcd, &["role", "add", AGENT_USER]);
    ctl(
        &fleet.etcd,
        &[
            "role",
            "grant-permission",
            AGENT_USER,
            "readwrite",
            "--prefix=true",
            &prefix,
        ],
    );
    ctl(&fleet.etcd, &["user", "grant-role", AGENT_USER, AGENT_USER]);
    ctl(&fleet.etcd, &["auth", "enable"]);
    // Authentication is on: without a user etcd refuses.
    let anonymous = fleet.etcd.ctl(&["put", &format!("{prefix}/x"), "y"]);
    assert!(
        anonymous.is_err(),
        "etcd took an anonymous write: {anonymous:?}"
    );
    fleet.etcd.ctl_user = Some(format!("root:{ROOT_PASSWORD}"));

    let password = dir.write("password", &format!("{AGENT_PASSWORD}\n"));
    let wrong = dir.write("wrong-password", "not-the-password\n");

    // Everything right: writes are taken, land in etcd, and translate.
    let a = start(&fleet, 0, &security_args(&tls, true, &password));
    let t = &fleet.topologies[0];
    a.client()
        .event(&eni("eni-i", t.instance.addr))
        .unwrap_or_else(|e| panic!("create the ENI over TLS with a user: {e}\n{}", a.log_text()));
    let g = a
        .client()
        .event(&Event::Associate {
            eip: t.eip,
            eni: "eni-i".into(),
            private_ip: None,
            mode: Mode::Nat,
        })
        .expect("associate over TLS with a user");
    assert_eq!(g.generation, g.applied_generation);
    assert_eq!(
        g.generation,
        fleet.etcd.revision(),
        "the generation is etcd's revision"
    );
    let keys = ctl(&fleet.etcd, &["get", &prefix, "--prefix", "--keys-only"]);
    assert!(
        keys.contains(&t.eip.to_string()) && keys.contains("eni-i"),
        "the association and the ENI are in etcd: {keys}"
    );
    assert!(translated(t, 7000), "the gateway translates");
    println!(
        "TLS + user: associate acknowledged at generation {}, in etcd, translated",
        g.generation
    );
    let revision = fleet.etcd.revision();

    // A wrong password: etcd refuses to authenticate the agent, which
    // answers a write with 500 `failed` naming etcd's refusal.
    let b = start(&fleet, 1, &security_args(&tls, true, &wrong));
    match b
        .client()
        .event(&eni("eni-b", Ipv4Addr::new(10, 201, 0, 2)))
    {
        Err(ClientError::Api { status, error }) => {
            println!("wrong password: {status} {}: {}", error.kind, error.message);
            assert_eq!(status, 500, "{}", error.message);
            assert_eq!(error.kind, ErrorKind::Failed);
            assert!(
                error.message.contains("refused")
                    && error.message.contains("authentication failed"),
                "names etcd's refusal: {}",
                error.message
            );
        }
        other => panic!(
            "a wrong password was not refused: {other:?}\n{}",
            b.log_text()
        ),
    }
    assert!(
        b.client().state().unwrap().associations.is_empty(),
        "the agent with a wrong password has none of the fleet's state"
    );

    // No client certificate: etcd ends the TLS handshake; the agent finds
    // it unreachable and answers a write with 503 `unavailable`.
    let c = start(&fleet, 2, &security_args(&tls, false, &password));
    match c
        .client()
        .event(&eni("eni-c", Ipv4Addr::new(10, 201, 0, 3)))
    {
        Err(ClientError::Api { status, error }) => {
            println!(
                "no client certificate: {status} {}: {}",
                error.kind, error.message
            );
            assert_eq!(status, 503, "{}", error.message);
            assert_eq!(error.kind, ErrorKind::Unavailable);
            assert!(
                error.message.contains("unreachable"),
                "names etcd: {}",
                error.message
            );
        }
        other => panic!(
            "no client certificate was not refused: {other:?}\n{}",
            c.log_text()
        ),
    }
    assert!(c.client().state().unwrap().associations.is_empty());
    // The handshake's end shows differently on the client side (an alert,
    // a broken pipe, a closed connection); etcd names the reason.
    let logs = fleet.etcd.logs();
    assert!(
        logs.contains("didn't provide a certificate"),
        "etcd rejected the handshake for want of a certificate:\n{logs}"
    );

    assert_eq!(fleet.etcd.revision(), revision, "neither wrote to etcd");
    // The good agent still works alongside.
    let g = a
        .client()
        .event(&eni("eni-a2", Ipv4Addr::new(10, 201, 0, 4)))
        .expect("a write through the good agent");
    assert_eq!(g.generation, fleet.etcd.revision());
}
