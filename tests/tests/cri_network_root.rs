//! Pod networking through CNI, as the kernel shows it: each test writes its
//! own conflist (its own bridge and subnet, in caissond's temp CNI dir) and
//! removes the bridge, the host-local allocations and portmap's rules
//! afterwards. Traffic stays between the test's pods and the host's address
//! on the test bridge. Needs root and containernetworking-plugins.

use std::io::Read;
use std::time::Duration;

use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::{container_config, wait_until, with_host_network, Caissond};
use k8s_cri::v1 as cri;

fn pinned_netns(d: &Caissond) -> Vec<String> {
    std::fs::read_dir(d.dir.path().join("run/netns"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn network_ready(d: &Caissond) -> cri::RuntimeCondition {
    let mut rt = d.runtime();
    let status =
        d.rt.block_on(rt.status(cri::StatusRequest { verbose: false }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
    status
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition")
}

fn stop_and_remove(d: &Caissond, pod: &str) {
    let mut rt = d.runtime();
    d.rt.block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    }))
    .unwrap();
    d.rt.block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    }))
    .unwrap();
}

#[test]
fn two_pods_on_the_bridge_reach_each_other() {
    let net = TestNetwork::new("cst-pods", "cst-pods0", "10.231.1");
    let d = Caissond::start("");
    d.import_busybox();
    net.install(&d, r#", {"type": "loopback"}"#);
    let mut configs = vec![];
    let mut pods = vec![];
    let mut containers = vec![];
    for name in ["alpha", "beta"] {
        let mut config = d.pod_config(name);
        config.hostname = format!("{name}-host");
        config.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let pod = d.run_pod(&config);
        containers.push(d.create_started_container(
            &pod,
            &config,
            container_config("main", &["sleep", "1000"]),
        ));
        pods.push(pod);
        configs.push(config);
    }
    let ips: Vec<String> = pods
        .iter()
        .map(|p| d.pod_status(p).network.unwrap().ip)
        .collect();
    for ip in &ips {
        assert!(
            ip.starts_with("10.231.1."),
            "pod IP {ip:?} is not on the test subnet"
        );
    }
    assert_ne!(ips[0], ips[1]);
    assert_eq!(net.allocations(), {
        let mut v = ips.clone();
        v.sort();
        v
    });
    assert_eq!(net.ports().len(), 2, "one veth per pod on {}", net.bridge);
    assert_eq!(pinned_netns(&d).len(), 2);

    // eth0 carries the pod IP; lo is up; /etc/hosts and resolv.conf.
    let addr = d.exec(&containers[0], &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {}/24", ips[0])), "{addr}");
    let lo = d.exec(&containers[0], &["ip", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo is not up: {lo}");
    let hosts = d.exec(&containers[0], &["cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&format!("{}\talpha-host\n", ips[0])),
        "{hosts}"
    );
    assert_eq!(
        d.exec(&containers[0], &["cat", "/etc/resolv.conf"]),
        "nameserver 10.96.0.10\nsearch ns.svc.cluster.local\noptions ndots:5\n"
    );

    // Both ways, and over TCP.
    d.exec(&containers[0], &["ping", "-c", "1", "-W", "5", &ips[1]]);
    d.exec(&containers[1], &["ping", "-c", "1", "-W", "5", &ips[0]]);
    let listener = d.create_started_container(
        &pods[1],
        &configs[1],
        container_config("listener", &["sh", "-c", "echo over-tcp | nc -l -p 7070"]),
    );
    let got = wait_until("the nc listener answers", Duration::from_secs(10), || {
        let out = d
            .try_exec(&containers[0], &["nc", &ips[1], "7070"], 5)
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.exit_code == 0 && !text.is_empty()).then_some(text)
    });
    assert_eq!(got, "over-tcp\n");
    let _ = listener;

    for pod in &pods {
        stop_and_remove(&d, pod);
    }
    assert!(
        net.allocations().is_empty(),
        "IPs not released: {:?}",
        net.allocations()
    );
    assert!(net.ports().is_empty(), "veths left: {:?}", net.ports());
    assert!(
        pinned_netns(&d).is_empty(),
        "netns left: {:?}",
        pinned_netns(&d)
    );
}

#[test]
fn a_host_port_is_reachable_from_the_host() {
    let net = TestNetwork::new("cst-ports", "cst-ports0", "10.231.2").with_portmap();
    let d = Caissond::start("");
    d.import_busybox();
    net.install(
        &d,
        r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#,
    );
    let mut config = d.pod_config("web");
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18931,
        host_ip: net.gateway(),
    }];
    let pod = d.run_pod(&config);
    d.create_started_container(
        &pod,
        &config,
        container_config(
            "web",
            &["sh", "-c", "echo hello-from-the-pod | nc -l -p 8080"],
        ),
    );
    assert!(
        net.iptables_rules().iter().any(|r| r.contains("18931")),
        "portmap added no DNAT rule: {:?}",
        net.iptables_rules()
    );
    // The host's address on the test bridge: traffic never leaves the host.
    let target = format!("{}:18931", net.gateway());
    let got = wait_until("the hostPort answers", Duration::from_secs(10), || {
        let mut s =
            std::net::TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(2))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        (!text.is_empty()).then_some(text)
    });
    assert_eq!(got, "hello-from-the-pod\n");

    stop_and_remove(&d, &pod);
    assert!(
        net.iptables_rules().is_empty(),
        "iptables rules left: {:?}",
        net.iptables_rules()
    );
    assert!(net.allocations().is_empty());
}

#[test]
fn a_host_network_pod_sees_the_host_interfaces() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = with_host_network(d.pod_config("hostnet"));
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    // Other tests in this binary add and remove bridges and veths while this one runs,
    // so only the host interfaces present both before and after the read must show.
    let host_interfaces = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|iface| iface.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = host_interfaces();
    let dev = d.exec(&c, &["cat", "/proc/net/dev"]);
    let stable: Vec<String> = before.intersection(&host_interfaces()).cloned().collect();
    assert!(
        stable.iter().any(|name| name != "lo"),
        "the host has no interface but lo: {stable:?}"
    );
    for name in &stable {
        assert!(
            dev.contains(&format!("{name}:")),
            "{name} missing in the pod:\n{dev}"
        );
    }
    assert_eq!(d.pod_status(&pod).network.unwrap().ip, "");
    assert!(pinned_netns(&d).is_empty(), "a hostNetwork pod got a netns");
}

#[test]
fn network_ready_flips_with_the_cni_config() {
    let d = Caissond::start("");
    let before = network_ready(&d);
    assert!(!before.status);
    assert_eq!(before.reason, "NetworkPluginNotReady");
    assert!(!before.message.is_empty());

    // Not a config: still not ready.
    std::fs::create_dir_all(d.cni_conf_dir()).unwrap();
    std::fs::write(d.cni_conf_dir().join("README"), "not a config").unwrap();
    std::fs::write(d.cni_conf_dir().join("05-broken.conflist"), "{").unwrap();
    assert!(!network_ready(&d).status);

    // The conflist is read at each Status: no restart.
    let net = TestNetwork::new("cst-ready", "cst-ready0", "10.231.3");
    let path = net.install(&d, "");
    let ready = network_ready(&d);
    assert!(ready.status, "{ready:?}");
    assert_eq!(ready.reason, "");
    std::fs::remove_file(path).unwrap();
    assert!(!network_ready(&d).status);
}

#[test]
fn a_failing_plugin_fails_the_pod_and_leaves_nothing() {
    let net = TestNetwork::new("cst-fail", "cst-fail0", "10.231.4");
    let d = Caissond::start("");
    std::fs::create_dir_all(d.cni_bin_dir()).unwrap();
    let plugin = d.cni_bin_dir().join("cst-refuse");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"cst-refuse says no\", \"details\": \"on purpose\"}'\n  exit 1\nfi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The bridge plugin runs first: a veth and an IP exist when cst-refuse fails.
    net.install(&d, r#", {"type": "cst-refuse"}"#);
    let mut rt = d.runtime();
    let err =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(d.pod_config("doomed")),
            runtime_handler: String::new(),
        }))
        .expect_err("RunPodSandbox succeeded with a failing plugin");
    assert!(
        err.message().contains("cst-refuse says no: on purpose"),
        "{}",
        err.message()
    );
    let pods =
        d.rt.block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()))
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty(), "a failed pod is listed: {pods:?}");
    assert!(
        pinned_netns(&d).is_empty(),
        "netns left: {:?}",
        pinned_netns(&d)
    );
    assert!(net.ports().is_empty(), "veths left: {:?}", net.ports());
    assert!(
        net.allocations().is_empty(),
        "IPs left: {:?}",
        net.allocations()
    );
}

#[test]
fn del_works_after_a_restart() {
    let net = TestNetwork::new("cst-restart", "cst-rst0", "10.231.5");
    let mut d = Caissond::start("");
    let conflist = net.install(&d, "");
    let pod = d.run_pod(&d.pod_config("survivor"));
    let ip = d.pod_status(&pod).network.unwrap().ip;
    assert_eq!(net.allocations(), vec![ip.clone()]);
    d.restart_after_sigkill();
    // DEL uses the config recorded at ADD, not what the dir holds now.
    std::fs::remove_file(conflist).unwrap();
    assert_eq!(d.pod_status(&pod).network.unwrap().ip, ip);
    stop_and_remove(&d, &pod);
    assert!(
        net.allocations().is_empty(),
        "IP not released: {:?}",
        net.allocations()
    );
    assert!(net.ports().is_empty(), "veths left: {:?}", net.ports());
    assert!(
        pinned_netns(&d).is_empty(),
        "netns left: {:?}",
        pinned_netns(&d)
    );
}
