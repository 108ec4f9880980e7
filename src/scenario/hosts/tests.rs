use crate::scenario::parse;

const BASE: &str = "name: t
brokers: { kind: embedded, count: 2, hosts: [h1, h2] }
publishers: [{ name: light, count: 2, rate: 10, payload_bytes: 600, duration: 1s }]
arrival: { order: random, interval: 1s }
methods: [{ name: dns-rr, assign: dns-rr }]
";

fn with(extra: &str) -> Result<crate::scenario::Scenario, String> {
    parse(&format!("{BASE}{extra}"), "s.yaml").map_err(|e| e.0)
}

const HOSTS: &str = "hosts:
  local: { address: 198.18.0.1 }
  h1: { ssh: root@198.18.0.11, identity: /bed/id_ed25519, known_hosts: /bed/known_hosts }
  h2: { ssh: lab@10.0.0.12:2222, address: 198.18.0.12 }
  h3: { ssh: root@198.18.0.13 }
";

#[test]
fn hosts_place_brokers_and_loaders() {
    let s = with(&format!("{HOSTS}loaders: [h3]\n")).unwrap();
    let plan = s.hosts.unwrap();
    assert_eq!(plan.broker_hosts, ["h1", "h2"]);
    assert_eq!(plan.loaders, ["h3"]);
    assert_eq!(plan.local_address, Some("198.18.0.1".parse().unwrap()));
    let h2 = plan.host("h2").unwrap();
    assert_eq!(h2.target.port, Some(2222));
    assert_eq!(h2.address.to_string(), "198.18.0.12");
    let h1 = plan.host("h1").unwrap();
    assert_eq!(
        h1.target.identity.as_deref(),
        Some("/bed/id_ed25519".as_ref())
    );
    assert_eq!(h1.at, "s.yaml:8:7");
    assert_eq!(plan.used().len(), 3);
}

#[test]
fn every_name_must_be_defined_and_errors_say_where() {
    let e = with(&format!("{HOSTS}loaders: [h9]\n")).unwrap_err();
    assert!(
        e.starts_with("s.yaml:11:") && e.contains("no host `h9`"),
        "{e}"
    );
    let e = with("loaders: [h3]\n").unwrap_err();
    assert!(e.contains("need a `hosts:` block"), "{e}");
    let e = with(&HOSTS.replace("  local: { address: 198.18.0.1 }\n", "")).unwrap_err();
    assert!(e.contains("local: { address: IP }"), "{e}");
    let e = with(&HOSTS.replace("root@198.18.0.13", "198.18.0.13")).unwrap_err();
    assert!(
        e.starts_with("s.yaml:10:") && e.contains("user@address"),
        "{e}"
    );
    let e =
        with(&HOSTS.replace("lab@10.0.0.12:2222, address: 198.18.0.12", "lab@box")).unwrap_err();
    assert!(e.contains("not an IP address"), "{e}");
    let e = with(&format!("{HOSTS}loaders: [local]\n")).unwrap_err();
    assert!(e.contains("`local` cannot be listed"), "{e}");
}

#[test]
fn the_dispatcher_goes_on_a_defined_host_beside_brokers_on_hosts() {
    let dispatched = BASE.replace(
        "[{ name: dns-rr, assign: dns-rr }]",
        "[{ name: dns-rr, assign: dns-rr }, { name: p, assign: dispatcher, policy: least-cpu }]",
    );
    let read = |base: &str, extra: &str| {
        parse(&format!("{base}{HOSTS}{extra}"), "s.yaml").map_err(|e| e.0)
    };
    let plan = read(&dispatched, "dispatcher_host: h3\n")
        .unwrap()
        .hosts
        .unwrap();
    assert_eq!(plan.dispatcher.as_deref(), Some("h3"));
    assert_eq!(plan.used().len(), 3, "h3 is used by the dispatcher alone");
    let here = read(&dispatched, "dispatcher_host: local\n").unwrap();
    assert_eq!(here.hosts.unwrap().dispatcher, None);

    let e = read(&dispatched, "dispatcher_host: h9\n").unwrap_err();
    assert!(
        e.starts_with("s.yaml:11:18:") && e.contains("no host `h9`"),
        "{e}"
    );
    let e = read(BASE, "dispatcher_host: h3\n").unwrap_err();
    assert!(e.contains("no method has `assign: dispatcher`"), "{e}");
    let local = dispatched.replace(", hosts: [h1, h2]", "");
    let e = read(&local, "dispatcher_host: h3\n").unwrap_err();
    assert!(
        e.starts_with("s.yaml:11:") && e.contains("needs the brokers on hosts too"),
        "{e}"
    );
    let e = parse(&format!("{local}dispatcher_host: h3\n"), "s.yaml")
        .unwrap_err()
        .0;
    assert!(
        e.starts_with("s.yaml:6:") && e.contains("needs a `hosts:` block"),
        "{e}"
    );
    // What a dispatcher on a host cannot do is refused with the brokers on hosts.
    let tls = read(&dispatched, "dispatcher_host: h3\ntls: true\n").unwrap_err();
    assert!(tls.contains("tls: true"), "{tls}");
    let restart = "dispatcher_host: h3\nfaults: [{ at: 1s, kind: restart-dispatcher }]\n";
    let e = read(&dispatched, restart).unwrap_err();
    assert!(e.contains("brokers on hosts: no faults"), "{e}");
}

#[test]
fn what_brokers_on_hosts_cannot_do_is_refused_where_it_is_written() {
    let one = BASE.replace("hosts: [h1, h2]", "hosts: [h1]");
    let e = parse(&format!("{one}{HOSTS}"), "s.yaml").unwrap_err().0;
    assert!(
        e.starts_with("s.yaml:2:") && e.contains("one host per broker"),
        "{e}"
    );
    let capped = BASE.replace("embedded, count: 2,", "embedded, count: 2, cpu_limit: 0.5,");
    let e = parse(&format!("{capped}{HOSTS}"), "s.yaml").unwrap_err().0;
    assert!(e.contains("brokers on hosts: no brokers.cpu_limit"), "{e}");
    let mosq = BASE.replace("embedded", "mosquitto");
    assert!(parse(&format!("{mosq}{HOSTS}"), "s.yaml").is_ok());
    let plugin = BASE.replace("embedded,", "mosquitto, plugin: true,");
    let e = parse(&format!("{plugin}{HOSTS}"), "s.yaml").unwrap_err().0;
    assert!(
        e.starts_with("s.yaml:2:") && e.contains("brokers on hosts: no brokers.plugin"),
        "{e}"
    );
    let moving = mosq.replace(
        "[{ name: dns-rr, assign: dns-rr }]",
        "[{ name: p, assign: dispatcher, policy: least-cpu, rebalance: {} }]",
    );
    let e = parse(&format!("{moving}{HOSTS}"), "s.yaml").unwrap_err().0;
    assert!(e.contains("no moves through the Mosquitto plugin"), "{e}");
    let takeover = moving.replace("rebalance: {}", "rebalance: { mover: takeover }");
    assert!(parse(&format!("{takeover}{HOSTS}"), "s.yaml").is_ok());
    let local = BASE.replace(", hosts: [h1, h2]", "");
    let e = parse(&format!("{local}{HOSTS}loaders: [h3]\n"), "s.yaml")
        .unwrap_err()
        .0;
    assert!(e.contains("need the brokers on hosts too"), "{e}");
}

#[test]
fn the_shipped_hosts_scenarios_are_the_paper_s_on_bed_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(&file, HOSTS).unwrap();
    let read = |text: &str| {
        let text = text.replace("results/testbed/hosts.yaml", &file.display().to_string());
        parse(&text, "x.yaml").unwrap()
    };
    let paper = parse(include_str!("../../../scenarios/paper.yaml"), "paper.yaml").unwrap();
    let on_hosts = read(include_str!("../../../scenarios/paper-hosts.yaml"));
    assert_eq!(on_hosts.profiles, paper.profiles);
    assert_eq!(on_hosts.arrival, paper.arrival);
    assert_eq!(on_hosts.methods, paper.methods);
    assert_eq!((on_hosts.trials, on_hosts.seed), (paper.trials, paper.seed));
    for s in [
        on_hosts,
        read(include_str!("../../../scenarios/hosts-quick.yaml")),
    ] {
        let plan = s.hosts.unwrap();
        assert_eq!(
            (plan.broker_hosts, plan.loaders),
            (vec!["h1".into(), "h2".into()], vec!["h3".to_owned()])
        );
    }
}

#[test]
fn an_included_file_gives_the_hosts_and_its_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(&file, format!("# a bed\n{HOSTS}")).unwrap();
    let include = format!("hosts: {{ include: {} }}\n", file.display());
    let plan = with(&include).unwrap().hosts.unwrap();
    assert_eq!(plan.source, file.display().to_string());
    assert_eq!(
        plan.host("h1").unwrap().at,
        format!("{}:4:7", file.display())
    );
    assert_eq!(plan.testbed_dir, None, "no testbed.json beside it");
    std::fs::write(dir.path().join("testbed.json"), "{}").unwrap();
    let plan = with(&include).unwrap().hosts.unwrap();
    assert_eq!(
        plan.testbed_dir.as_deref(),
        Some(dir.path().canonicalize().unwrap().as_path())
    );

    std::fs::write(
        &file,
        HOSTS.replace("known_hosts: /bed", "known_host: /bed"),
    )
    .unwrap();
    let e = with(&include).unwrap_err();
    assert!(e.starts_with(&format!("{}:3:", file.display())), "{e}");
    let e = with("hosts: { include: /no/such/hosts.yaml }\n").unwrap_err();
    assert!(
        e.starts_with("s.yaml:6:") && e.contains("cannot read"),
        "{e}"
    );
}
