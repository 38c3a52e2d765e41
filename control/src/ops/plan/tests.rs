//! The planner without daemons: who is sent what, on which base.

use std::collections::BTreeMap;

use super::*;
use crate::config::{ClusterDoc, HealthChecks, Member, MemberState, Service};

fn member(id: &str, last: u8, priority: u8) -> Member {
    Member {
        id: id.into(),
        private_ip: std::net::IpAddr::from([10, 0, 0, last]),
        priority,
        droplet_id: None,
        state: MemberState::Active,
        admin: None,
    }
}

fn doc(generation: u64, ids: &[&str]) -> ClusterDoc {
    ClusterDoc {
        generation,
        cluster: "web".into(),
        election: Default::default(),
        members: ids
            .iter()
            .enumerate()
            .map(|(i, id)| member(id, i as u8 + 2, 150 - i as u8))
            .collect(),
        services: Vec::new(),
    }
}

fn service(name: &str, port: u16) -> Service {
    Service {
        name: name.into(),
        hosts: vec!["app.example.com".into()],
        port,
        retries: 2,
        health: HealthChecks::default(),
        hsts: None,
    }
}

#[test]
fn a_change_goes_to_old_and_new_members_on_the_read_base() {
    let cur = doc(4, &["misty-owl", "brave-fox"]);
    let mut new = doc(5, &["misty-owl", "calm-elk"]);
    new.members[1].private_ip = [10, 0, 0, 9].into();
    let t = targets(&cur, &new);
    let ids: Vec<(&str, bool)> = t.iter().map(|t| (t.member.id.as_str(), t.leave)).collect();
    assert_eq!(
        ids,
        [
            ("misty-owl", false),
            ("calm-elk", false),
            ("brave-fox", true)
        ]
    );
    assert_eq!(t[0].base, Base::Cas(4, Some(cur.hash())));
    assert_eq!(
        t[1].base,
        Base::Current,
        "a joining node: its own generation"
    );
    assert_eq!(t[2].base, Base::Cas(4, Some(cur.hash())));
}

#[test]
fn converge_uses_each_members_read_and_skips_the_unread() {
    let cur = doc(4, &["misty-owl", "brave-fox", "calm-elk"]);
    let content = doc(2, &["misty-owl", "brave-fox"]);
    let read: BTreeMap<String, Read> = [
        ("misty-owl".to_string(), Ok((4, "aa".to_string()))),
        ("brave-fox".to_string(), Ok((7, "bb".to_string()))),
        ("calm-elk".to_string(), Err("refused".to_string())),
    ]
    .into();
    assert_eq!(converge_generation(&cur, &content, &read), 8);
    let t = converge_targets(&cur, &at(&content, 8), &read);
    assert_eq!(t[0].base, Base::Cas(4, Some("aa".into())));
    assert_eq!(t[1].base, Base::Cas(7, Some("bb".into())));
    assert_eq!(t[2].base, Base::Unreachable("refused".into()));
    assert!(t[2].leave);
}

#[test]
fn node_add_refuses_taken_ids_and_ips_and_defaults_the_priority() {
    let mut d = doc(1, &["misty-owl", "brave-fox"]);
    let m = member("", 9, 0);
    assert_eq!(
        add_member(&mut d, m.clone(), Some("brave-fox".into()), None),
        Err(PlanError::IdTaken("brave-fox".into()))
    );
    let mut same_ip = m.clone();
    same_ip.private_ip = [10, 0, 0, 2].into();
    assert!(matches!(
        add_member(&mut d, same_ip, None, None),
        Err(PlanError::IpTaken { .. })
    ));
    let id = add_member(&mut d, m, Some("calm-elk".into()), None).unwrap();
    assert_eq!(id, "calm-elk");
    assert_eq!(
        d.member("calm-elk").unwrap().priority,
        139,
        "10 below the lowest"
    );
}

#[test]
fn make_active_tops_every_other_priority_once() {
    let mut d = doc(1, &["misty-owl", "brave-fox"]);
    make_top(&mut d, "brave-fox").unwrap();
    assert_eq!(d.member("brave-fox").unwrap().priority, 151);
    make_top(&mut d, "brave-fox").unwrap();
    assert_eq!(
        d.member("brave-fox").unwrap().priority,
        151,
        "already above"
    );
    assert!(matches!(
        make_top(&mut d, "no-one"),
        Err(PlanError::NoMember { .. })
    ));
    d.members[0].priority = 254;
    assert_eq!(
        make_top(&mut d, "brave-fox"),
        Err(PlanError::PriorityCeiling)
    );
}

#[test]
fn undeploy_of_an_unknown_service_is_refused() {
    let mut d = doc(1, &["misty-owl"]);
    d.services.push(service("app", 8080));
    assert_eq!(
        remove_service(&mut d, "api"),
        Err(PlanError::NoService("api".into()))
    );
    remove_service(&mut d, "app").unwrap();
    assert!(d.services.is_empty());
}

#[test]
fn diff_marks_added_and_removed_lines() {
    assert_eq!(diff("a\nb\nc\n", "a\nc\nd\n"), "  a\n- b\n  c\n+ d\n");
}

fn read_of(d: &ClusterDoc, n: usize) -> Vec<(u64, String)> {
    vec![(d.generation, d.hash()); n]
}

#[test]
fn deploy_pins_at_one_generation_then_rolls() {
    let cur = doc(3, &["misty-owl", "brave-fox"]);
    let plan = DeployPlan::new(&cur, service("app", 8080)).unwrap();
    let read = read_of(&cur, 2);
    let a = plan.agree(&cur.members, &read).unwrap();
    assert_eq!((a.generation, a.everywhere), (4, false));
    assert_eq!(a.has, [false, false]);
    let pins = plan.pins(&cur.members, &read, &a);
    assert_eq!(pins[0].0.base, Base::Cas(3, Some(cur.hash())));
    assert_eq!(pins[0].1, at(&cur, 4), "pinned with the content it has");
}

#[test]
fn deploy_resumes_a_stopped_roll_and_only_checks_a_finished_one() {
    let mut with = doc(4, &["misty-owl", "brave-fox"]);
    with.services.push(service("app", 8080));
    let without = doc(4, &["misty-owl", "brave-fox"]);
    let plan = DeployPlan::new(&with, service("app", 8080)).unwrap();
    let read = vec![(4, with.hash()), (4, without.hash())];
    let a = plan.agree(&with.members, &read).unwrap();
    assert_eq!((a.generation, a.has.clone()), (5, vec![true, false]));
    let pins = plan.pins(&with.members, &read, &a);
    assert_eq!(pins[1].1, at(&without, 5));
    let a = plan.agree(&with.members, &read_of(&with, 2)).unwrap();
    assert_eq!((a.generation, a.everywhere), (4, true));
}

#[test]
fn deploy_refuses_when_a_member_has_another_document() {
    let cur = doc(3, &["misty-owl", "brave-fox"]);
    let plan = DeployPlan::new(&cur, service("app", 8080)).unwrap();
    let read = vec![(3, cur.hash()), (5, "ff".repeat(32))];
    let differs = plan.agree(&cur.members, &read).unwrap_err();
    assert_eq!(differs.len(), 1);
    assert_eq!(
        (differs[0].id.as_str(), differs[0].generation),
        ("brave-fox", 5)
    );
    let mut other = cur.clone();
    other.services.push(service("app", 9090));
    assert!(matches!(
        DeployPlan::new(&other, service("app", 8080)),
        Err(PlanError::ServiceDiffers { port: 9090, .. })
    ));
}

#[test]
fn an_unreachable_member_being_removed_is_excused() {
    use crate::ops::outcome::{MemberOutcome, MemberReport, Report};
    let line = |id: &str, outcome| MemberReport {
        id: id.into(),
        addr: ([127, 0, 0, 1], 9180).into(),
        outcome,
    };
    let r = Report {
        members: vec![
            line("misty-owl", MemberOutcome::Applied { generation: 5 }),
            line(
                "brave-fox",
                MemberOutcome::Unreachable {
                    error: "down".into(),
                },
            ),
            line(
                "calm-elk",
                MemberOutcome::Unreachable {
                    error: "down".into(),
                },
            ),
        ],
        aborted: false,
    };
    assert_eq!(r.failed(), ["brave-fox", "calm-elk"]);
    let r = r.excuse_unreachable("brave-fox");
    assert_eq!(
        r.failed(),
        ["calm-elk"],
        "only the leaving member is excused"
    );
}
