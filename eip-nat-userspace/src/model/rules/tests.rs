//! One case per rule: the refusal names it, and changes nothing.

use std::net::Ipv4Addr;

use crate::model::{EniKind, Event, Journal, Limits, Location, Mode, RuleError, State, Touched};

/// One event on its own: a refused one changes nothing, so nothing to undo.
fn apply(s: &mut State, ev: &Event) -> Result<Touched, RuleError> {
    s.apply(ev, &mut Journal::new(s))
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn via(s: &str) -> Location {
    Location {
        via: Some(ip(s)),
        dev: None,
    }
}

/// Instance i-1 with primary ENI eni-p (10.0.0.1), instance i-2 with eni-q
/// (10.0.0.2), and a secondary ENI eni-s (10.0.1.1) attached to i-1.
fn world() -> State {
    let mut s = State::new(Limits {
        max_associations: 8,
        multi_eip_quota: 2,
    });
    for ev in [
        Event::CreateEni {
            eni: "eni-p".into(),
            kind: EniKind::Primary,
            primary_ip: ip("10.0.0.1"),
            instance: Some("i-1".into()),
            location: via("10.9.0.1"),
        },
        Event::CreateEni {
            eni: "eni-q".into(),
            kind: EniKind::Primary,
            primary_ip: ip("10.0.0.2"),
            instance: Some("i-2".into()),
            location: via("10.9.0.2"),
        },
        Event::CreateEni {
            eni: "eni-s".into(),
            kind: EniKind::Secondary,
            primary_ip: ip("10.0.1.1"),
            instance: None,
            location: Location::default(),
        },
        Event::AttachEni {
            eni: "eni-s".into(),
            instance: "i-1".into(),
            location: via("10.9.0.1"),
        },
    ] {
        apply(&mut s, &ev).expect("world");
    }
    s
}

fn refused(s: &mut State, ev: Event) -> RuleError {
    let before = s.clone();
    let e = apply(s, &ev).expect_err("should be refused");
    assert_eq!(*s, before, "{ev:?} changed the state");
    e
}

fn associate(eip: &str, eni: &str, private_ip: Option<&str>, mode: Mode) -> Event {
    Event::Associate {
        eip: ip(eip),
        eni: eni.into(),
        private_ip: private_ip.map(ip),
        mode,
    }
}

#[test]
fn an_eip_has_one_target_and_a_private_ip_one_eip() {
    let mut s = world();
    apply(&mut s, &associate("203.0.113.1", "eni-p", None, Mode::Nat)).unwrap();
    let e = refused(&mut s, associate("203.0.113.1", "eni-q", None, Mode::Nat));
    assert_eq!(e.code(), "eip_has_one_target");
    assert!(e.to_string().contains("an EIP has one target"), "{e}");
    apply(
        &mut s,
        &Event::AssignIp {
            eni: "eni-s".into(),
            ip: ip("10.0.1.2"),
        },
    )
    .unwrap();
    apply(
        &mut s,
        &associate("203.0.113.2", "eni-s", Some("10.0.1.2"), Mode::Nat),
    )
    .unwrap();
    let e = refused(
        &mut s,
        associate("203.0.113.3", "eni-s", Some("10.0.1.2"), Mode::Nat),
    );
    assert_eq!(e.code(), "one_eip_per_private_ip");
    assert!(e.to_string().contains("at most one EIP"), "{e}");
}

#[test]
fn a_primary_eni_takes_one_eip_in_nat_mode_only() {
    let mut s = world();
    for mode in [Mode::CutThrough, Mode::MultiEip] {
        let e = refused(&mut s, associate("203.0.113.1", "eni-p", None, mode));
        assert_eq!(e.code(), "primary_eni_nat_only", "{e}");
    }
    apply(
        &mut s,
        &Event::AssignIp {
            eni: "eni-p".into(),
            ip: ip("10.0.0.11"),
        },
    )
    .unwrap();
    apply(&mut s, &associate("203.0.113.1", "eni-p", None, Mode::Nat)).unwrap();
    let e = refused(
        &mut s,
        associate("203.0.113.2", "eni-p", Some("10.0.0.11"), Mode::Nat),
    );
    assert_eq!(e.code(), "primary_eni_one_eip");
}

#[test]
fn cut_through_takes_the_primary_private_ip_and_nothing_else() {
    let mut s = world();
    apply(
        &mut s,
        &Event::AssignIp {
            eni: "eni-s".into(),
            ip: ip("10.0.1.2"),
        },
    )
    .unwrap();
    let e = refused(
        &mut s,
        associate("203.0.113.1", "eni-s", Some("10.0.1.2"), Mode::CutThrough),
    );
    assert_eq!(e.code(), "cut_through_primary_ip");
    apply(
        &mut s,
        &associate("203.0.113.1", "eni-s", None, Mode::CutThrough),
    )
    .unwrap();
    assert_eq!(
        s.association(ip("203.0.113.1")).unwrap().private_ip,
        Some(ip("10.0.1.1"))
    );
    for mode in [Mode::CutThrough, Mode::MultiEip, Mode::Nat] {
        let e = refused(&mut s, associate("203.0.113.2", "eni-s", None, mode));
        assert_eq!(e.code(), "cut_through_exclusive", "{mode:?}: {e}");
    }
}

#[test]
fn multi_eip_has_a_quota_and_no_private_ip() {
    let mut s = world();
    let e = refused(
        &mut s,
        associate("203.0.113.1", "eni-s", Some("10.0.1.1"), Mode::MultiEip),
    );
    assert_eq!(e.code(), "multi_eip_no_private_ip");
    for eip in ["203.0.113.1", "203.0.113.2"] {
        apply(&mut s, &associate(eip, "eni-s", None, Mode::MultiEip)).unwrap();
    }
    let e = refused(
        &mut s,
        associate("203.0.113.3", "eni-s", None, Mode::MultiEip),
    );
    assert_eq!(e.code(), "multi_eip_quota");
    assert!(e.to_string().contains("2 EIPs"), "{e}");
    let e = refused(&mut s, associate("203.0.113.3", "eni-s", None, Mode::Nat));
    assert_eq!(e.code(), "one_mode_per_eni");
}

#[test]
fn revoking_a_private_ip_that_carries_an_eip_is_refused() {
    let mut s = world();
    apply(
        &mut s,
        &Event::AssignIp {
            eni: "eni-s".into(),
            ip: ip("10.0.1.2"),
        },
    )
    .unwrap();
    apply(
        &mut s,
        &associate("203.0.113.1", "eni-s", Some("10.0.1.2"), Mode::Nat),
    )
    .unwrap();
    let revoke = Event::RevokeIp {
        eni: "eni-s".into(),
        ip: ip("10.0.1.2"),
    };
    assert_eq!(refused(&mut s, revoke.clone()).code(), "ip_carries_eip");
    let e = refused(
        &mut s,
        Event::RevokeIp {
            eni: "eni-s".into(),
            ip: ip("10.0.1.1"),
        },
    );
    assert_eq!(e.code(), "revoke_primary_ip");
    apply(
        &mut s,
        &Event::Disassociate {
            eip: ip("203.0.113.1"),
        },
    )
    .unwrap();
    apply(&mut s, &revoke).unwrap();
}

#[test]
fn deleting_an_attached_eni_is_refused() {
    let mut s = world();
    let delete = Event::DeleteEni {
        eni: "eni-s".into(),
    };
    let e = refused(&mut s, delete.clone());
    assert_eq!(e.code(), "eni_attached");
    assert!(e.to_string().contains("attached to i-1"), "{e}");
    assert_eq!(
        refused(
            &mut s,
            Event::DeleteEni {
                eni: "eni-p".into()
            }
        )
        .code(),
        "primary_eni_fixed"
    );
    apply(
        &mut s,
        &Event::DetachEni {
            eni: "eni-s".into(),
        },
    )
    .unwrap();
    apply(&mut s, &delete).unwrap();
    assert!(s.eni("eni-s").is_none());
}

#[test]
fn moving_an_eni_takes_its_eips_along() {
    let mut s = world();
    apply(
        &mut s,
        &associate("203.0.113.1", "eni-s", None, Mode::MultiEip),
    )
    .unwrap();
    let mv = |instance: &str, at: &str| Event::MoveEni {
        eni: "eni-s".into(),
        instance: instance.into(),
        location: via(at),
    };
    assert_eq!(
        refused(&mut s, mv("i-1", "10.9.0.1")).code(),
        "same_instance"
    );
    assert_eq!(
        refused(&mut s, mv("i-9", "10.9.0.1")).code(),
        "unknown_instance"
    );
    let t = apply(&mut s, &mv("i-2", "10.9.0.2")).unwrap();
    assert!(t.addresses.contains(&ip("203.0.113.1")));
    assert_eq!(
        crate::model::tables::route_for(&s, ip("203.0.113.1")),
        Some(via("10.9.0.2"))
    );
}

#[test]
fn an_instance_goes_with_its_primary_eni() {
    let mut s = world();
    let term = Event::TerminateInstance {
        instance: "i-1".into(),
    };
    assert_eq!(refused(&mut s, term.clone()).code(), "instance_has_enis");
    apply(
        &mut s,
        &Event::DetachEni {
            eni: "eni-s".into(),
        },
    )
    .unwrap();
    apply(&mut s, &term).unwrap();
    assert!(s.eni("eni-p").is_none());
    // Its address is free again.
    apply(
        &mut s,
        &Event::AssignIp {
            eni: "eni-s".into(),
            ip: ip("10.0.0.1"),
        },
    )
    .unwrap();
}

#[test]
fn addresses_and_names_are_checked() {
    let mut s = world();
    let e = refused(&mut s, associate("127.0.0.1", "eni-p", None, Mode::Nat));
    assert!(e.to_string().contains("loopback"), "{e}");
    let e = refused(&mut s, associate("10.0.1.1", "eni-p", None, Mode::Nat));
    assert_eq!(e.code(), "address_in_use");
    assert!(e.to_string().contains("a private IP of ENI eni-s"), "{e}");
    let e = refused(
        &mut s,
        Event::CreateEni {
            eni: "eni x".into(),
            kind: EniKind::Secondary,
            primary_ip: ip("10.0.2.1"),
            instance: None,
            location: Location::default(),
        },
    );
    assert_eq!(e.code(), "invalid_name");
    let e = refused(
        &mut s,
        Event::LocateEni {
            eni: "eni-s".into(),
            location: Location {
                via: None,
                dev: Some("a/b".into()),
            },
        },
    );
    assert_eq!(e.code(), "invalid_name");
}

/// A state of `max_associations` with one secondary ENI, `eni-s`.
fn with_eni_s(max_associations: u32) -> State {
    let mut s = State::new(Limits {
        max_associations,
        multi_eip_quota: 10,
    });
    apply(
        &mut s,
        &Event::CreateEni {
            eni: "eni-s".into(),
            kind: EniKind::Secondary,
            primary_ip: ip("10.0.1.1"),
            instance: None,
            location: Location::default(),
        },
    )
    .unwrap();
    s
}

#[test]
fn a_full_table_refuses_and_slots_are_reused() {
    let mut s = with_eni_s(1);
    apply(
        &mut s,
        &associate("203.0.113.1", "eni-s", None, Mode::MultiEip),
    )
    .unwrap();
    let e = refused(
        &mut s,
        associate("203.0.113.2", "eni-s", None, Mode::MultiEip),
    );
    assert_eq!(e.code(), "table_full");
    apply(
        &mut s,
        &Event::Disassociate {
            eip: ip("203.0.113.1"),
        },
    )
    .unwrap();
    apply(
        &mut s,
        &associate("203.0.113.2", "eni-s", None, Mode::MultiEip),
    )
    .unwrap();
    assert_eq!(s.association(ip("203.0.113.2")).unwrap().slot, 0);
}

#[test]
fn events_are_plain_json() {
    let ev: Event = serde_json::from_str(
        r#"{"event":"associate","eip":"203.0.113.1","eni":"eni-s","mode":"cut-through"}"#,
    )
    .unwrap();
    assert_eq!(
        ev,
        associate("203.0.113.1", "eni-s", None, Mode::CutThrough)
    );
    assert!(serde_json::from_str::<Event>(r#"{"event":"associate","eip":"1.2.3"}"#).is_err());
    assert!(
        serde_json::from_str::<Event>(r#"{"event":"detach_eni","eni":"e","extra":1}"#).is_err()
    );
}

/// A batch that reused a freed counter slot, moved an address between two
/// ENIs and ended an instance, then had an event refused: undone exactly.
#[test]
fn undoing_a_batch_restores_slots_addresses_and_instances() {
    let mut s = world();
    for (eip, private) in [
        ("203.0.113.1", "10.0.1.1"),
        ("203.0.113.2", "10.0.1.2"),
        ("203.0.113.3", "10.0.1.3"),
    ] {
        if private != "10.0.1.1" {
            let assign = Event::AssignIp {
                eni: "eni-s".into(),
                ip: ip(private),
            };
            apply(&mut s, &assign).unwrap();
        }
        apply(&mut s, &associate(eip, "eni-s", Some(private), Mode::Nat)).unwrap();
    }
    apply(
        &mut s,
        &Event::Disassociate {
            eip: ip("203.0.113.2"),
        },
    )
    .unwrap();
    let before = s.clone();
    let batch = [
        // Takes the slot the disassociation freed.
        associate("203.0.113.9", "eni-s", Some("10.0.1.2"), Mode::Nat),
        Event::Disassociate {
            eip: ip("203.0.113.3"),
        },
        // 10.0.1.3 moves from eni-s to eni-q.
        Event::RevokeIp {
            eni: "eni-s".into(),
            ip: ip("10.0.1.3"),
        },
        Event::AssignIp {
            eni: "eni-q".into(),
            ip: ip("10.0.1.3"),
        },
        // i-2 ends, with eni-q.
        Event::TerminateInstance {
            instance: "i-2".into(),
        },
        // Refused: eni-s is attached.
        Event::DeleteEni {
            eni: "eni-s".into(),
        },
    ];
    let mut journal = Journal::new(&s);
    let (last, accepted) = batch.split_last().unwrap();
    for ev in accepted {
        s.apply(ev, &mut journal).unwrap();
    }
    assert_eq!(s.association(ip("203.0.113.9")).unwrap().slot, 1);
    assert!(s.eni("eni-q").is_none());
    assert_eq!(
        s.apply(last, &mut journal).unwrap_err().code(),
        "eni_attached"
    );
    s.undo(journal);
    assert_eq!(s, before);
}

/// Slots held for changes not yet durable are handed out last, and the
/// bookkeeping stays as a state rebuilt from its rows has it.
#[test]
fn held_slots_are_handed_out_last() {
    let mut s = with_eni_s(3);
    let limits = s.limits();
    let assoc = |s: &mut State, eip: &str| {
        apply(s, &associate(eip, "eni-s", None, Mode::MultiEip)).unwrap();
        s.association(ip(eip)).unwrap().slot
    };
    let disassoc = |s: &mut State, eip: &str| {
        apply(s, &Event::Disassociate { eip: ip(eip) }).unwrap();
    };
    let rebuilt = |s: &State| {
        let enis = s.enis().map(|(id, e)| (id.clone(), e.clone()));
        State::from_rows(limits, enis, s.associations().cloned()).unwrap()
    };
    assert_eq!(assoc(&mut s, "203.0.113.1"), 0);
    assert_eq!(assoc(&mut s, "203.0.113.2"), 1);
    // The top slot freed and held: the next association goes above it.
    disassoc(&mut s, "203.0.113.2");
    s.hold_slots(&[1]);
    assert_eq!(assoc(&mut s, "203.0.113.3"), 2);
    assert_eq!(s, rebuilt(&s));
    s.release_slots(&[1]);
    // A lower slot freed and held: the free one not held is taken.
    disassoc(&mut s, "203.0.113.1");
    s.hold_slots(&[0]);
    assert_eq!(assoc(&mut s, "203.0.113.4"), 1);
    // Every other slot taken: the held one is, rather than a refusal.
    assert_eq!(assoc(&mut s, "203.0.113.5"), 0);
    assert_eq!(s, rebuilt(&s));
}
