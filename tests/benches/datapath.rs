//! ns per packet of the XDP datapath under BPF_PROG_TEST_RUN, against the `swarmlb_pass` floor.
//!
//! Every sample is one BPF_PROG_TEST_RUN with repeat = 1: with repeat > 1 the kernel reruns the
//! program on the *same*, already translated buffer, so every run after the first would measure
//! a different path. The kernel's own `duration` is used (it excludes the syscall), so a sample
//! is the program plus the kernel's timer reads; the floor carries the same overhead, hence the
//! ratios. Bounded: SAMPLES per case and a TIME_LIMIT overall. Needs root.

use std::time::{Duration, Instant};

use lb_common::{Reason, maps};
use tests::{
    frames::*,
    lan::{one_node_swarm, swarm_service},
    testrun::*,
};

/// Samples per case; new flows are fewer so they stay well inside the NAT port range towards
/// the one backend and the new-flow table.
const SAMPLES: usize = 10_000;
const NEW_FLOW_SAMPLES: usize = 5_000;
const TIME_LIMIT: Duration = Duration::from_secs(10);
const VIP: [u8; 4] = [198, 18, 0, 10];

struct Stats {
    median: u64,
    min: u64,
    max: u64,
    n: usize,
}

fn stats(mut v: Vec<u64>) -> Stats {
    v.sort_unstable();
    Stats { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1], n: v.len() }
}

fn main() -> anyhow::Result<()> {
    let net = TestNet::enter()?;
    let mut dp = Datapath::load()?;
    dp.add_tx_port(net.lan.ifindex)?;
    dp.set_local_node("node-1");
    // `web` on port 80 (routed), and the same backend behind `overlay` on 81, whose replies get
    // their L4 checksum from scratch; the overlay's VNI is known to the VXLAN inspection.
    let services = swarm_service("web", "198.18.0.10:80/tcp", 8080, false)
        + &swarm_service("overlay", "198.18.0.10:81/tcp", 8080, true);
    dp.apply(&one_node_swarm("pass", 4789, &services))?;
    const VNI: u32 = tests::lan::OVERLAY_VNI;
    let ifindex = net.lan.ifindex;
    let started = Instant::now();

    let syn = |src: [u8; 4], sport: u16| Spec::tcp(src, sport, VIP, 80, SYN).macs(CLIENT_MAC, LAN_MAC).build();
    // New connections go to the overlay service, whose NAT range (every unprivileged port) the
    // samples cannot fill.
    let overlay_syn = |src: [u8; 4], sport: u16| Spec::tcp(src, sport, VIP, 81, SYN).macs(CLIENT_MAC, LAN_MAC).build();
    let syn_ack =
        |port: u16| Spec::tcp(BACKEND_LAN, 8080, LB_LAN, port, SYN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    // One established connection, for the established and reply cases.
    let first = dp.run(&syn(CLIENT, 1000), ifindex)?;
    anyhow::ensure!(first.action == XDP_TX, "setup SYN not translated: action {}", first.action);
    let snat_port = parse_and_verify(&first.frame)?.sport;
    anyhow::ensure!(dp.run(&syn_ack(snat_port), ifindex)?.action == XDP_TX, "setup SYN-ACK not translated");
    let setup_ack = Spec::tcp(CLIENT, 1000, VIP, 80, ACK).macs(CLIENT_MAC, LAN_MAC).build();
    anyhow::ensure!(dp.run(&setup_ack, ifindex)?.action == XDP_TX, "setup ACK not translated");
    let established = Spec::tcp(CLIENT, 1000, VIP, 80, ACK | PSH).macs(CLIENT_MAC, LAN_MAC).build();
    let reply = Spec::tcp(BACKEND_LAN, 8080, LB_LAN, snat_port, ACK | PSH).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    let passed = Spec::tcp(CLIENT, 1000, LB_LAN, 22, SYN).macs(CLIENT_MAC, LAN_MAC).build();
    let payload_1400 = [0x5a; 1400];
    let reply_1400 = Spec::tcp(BACKEND_LAN, 8080, LB_LAN, snat_port, ACK | PSH)
        .macs(BACKEND_LAN_MAC, LAN_MAC)
        .payload(&payload_1400)
        .build();
    let overlay_first = dp.run(&Spec::tcp(CLIENT, 1001, VIP, 81, SYN).macs(CLIENT_MAC, LAN_MAC).build(), ifindex)?;
    anyhow::ensure!(overlay_first.action == XDP_TX, "overlay setup SYN not translated");
    let overlay_port = parse_and_verify(&overlay_first.frame)?.sport;
    dp.run(&syn_ack(overlay_port), ifindex)?;
    let overlay_ack = Spec::tcp(CLIENT, 1001, VIP, 81, ACK).macs(CLIENT_MAC, LAN_MAC).build();
    anyhow::ensure!(dp.run(&overlay_ack, ifindex)?.action == XDP_TX, "overlay setup ACK not translated");
    let overlay_reply_1400 = Spec::tcp(BACKEND_LAN, 8080, LB_LAN, overlay_port, ACK | PSH)
        .macs(BACKEND_LAN_MAC, LAN_MAC)
        .payload(&payload_1400)
        .build();
    let vxlan = Spec::udp([198, 18, 0, 60], 51000, LB_LAN, 4789)
        .macs(CLIENT_MAC, LAN_MAC)
        .payload(
            &[&vxlan_header(0x08, VNI)[..], &Spec::tcp([198, 19, 10, 2], 1, [198, 19, 10, 3], 2, ACK).build()].concat(),
        )
        .build();

    let mut rows: Vec<(&str, Stats, &str)> = Vec::new();
    let mut measure = |name: &'static str,
                       prog: &str,
                       frame_of: &mut dyn FnMut(usize) -> Vec<u8>,
                       expect: u32,
                       samples: usize,
                       note: &'static str|
     -> anyhow::Result<()> {
        let mut v = Vec::with_capacity(samples);
        for i in 0..samples {
            if started.elapsed() > TIME_LIMIT {
                break;
            }
            let out = dp.run_prog(prog, &frame_of(i), ifindex, 1)?;
            anyhow::ensure!(
                out.action == expect,
                "{name}: action {} instead of {expect}; {:?}",
                out.action,
                dp.reasons()
            );
            v.push(out.duration_ns);
        }
        anyhow::ensure!(!v.is_empty(), "{name}: no sample within the time limit");
        rows.push((name, stats(v), note));
        Ok(())
    };
    let before_new = dp.reason(Reason::ToBackend)?;
    measure(
        "swarmlb_pass (floor)",
        maps::PROG_PASS,
        &mut |_| syn(CLIENT, 1000),
        XDP_PASS,
        SAMPLES,
        "reads the Ethernet header",
    )?;
    measure(
        "passed, not a frontend",
        maps::PROG_LB,
        &mut |_| passed.clone(),
        XDP_PASS,
        SAMPLES,
        "parse + fe_ports lookup + range",
    )?;
    measure(
        "new TCP flow",
        maps::PROG_LB,
        &mut |i| overlay_syn([198, 18, 1, 1 + (i / 60000) as u8], 1024 + (i % 60000) as u16),
        XDP_TX,
        NEW_FLOW_SAMPLES,
        "maglev + port claim + 2 inserts + FIB",
    )?;
    // The handshake's last step: the client's ACK moves both entries to the main table. Each
    // sample is a fresh connection's ACK, after its SYN and SYN-ACK (not measured).
    let mut confirm_setup = |i: usize| -> Vec<u8> {
        let src = [198, 18, 3, 1 + (i / 60000) as u8];
        let sport = 1024 + (i % 60000) as u16;
        let out = dp.run(&overlay_syn(src, sport), ifindex).expect("confirm setup SYN");
        let port = parse_and_verify(&out.frame).expect("translated SYN").sport;
        dp.run(&syn_ack(port), ifindex).expect("confirm setup SYN-ACK");
        Spec::tcp(src, sport, VIP, 81, ACK).macs(CLIENT_MAC, LAN_MAC).build()
    };
    let confirm_frames: Vec<Vec<u8>> = (0..NEW_FLOW_SAMPLES).map(&mut confirm_setup).collect();
    measure(
        "handshake ACK (confirm)",
        maps::PROG_LB,
        &mut |i| confirm_frames[i].clone(),
        XDP_TX,
        NEW_FLOW_SAMPLES,
        "2 inserts, 2 removals",
    )?;
    measure(
        "established flow",
        maps::PROG_LB,
        &mut |_| established.clone(),
        XDP_TX,
        SAMPLES,
        "1 lookup, cached next hop",
    )?;
    measure("reply to client", maps::PROG_LB, &mut |_| reply.clone(), XDP_TX, SAMPLES, "1 lookup, cached next hop")?;
    measure(
        "reply, 1400 B payload",
        maps::PROG_LB,
        &mut |_| reply_1400.clone(),
        XDP_TX,
        SAMPLES,
        "incremental csum (same as above)",
    )?;
    measure(
        "overlay reply, 1400 B",
        maps::PROG_LB,
        &mut |_| overlay_reply_1400.clone(),
        XDP_TX,
        SAMPLES,
        "+ L4 checksum from scratch",
    )?;
    measure(
        "VXLAN, known VNI",
        maps::PROG_LB,
        &mut |_| vxlan.clone(),
        XDP_PASS,
        SAMPLES,
        "parse + vxlan header + overlays lookup",
    )?;
    let to_backend = dp.reason(Reason::ToBackend)? - before_new;
    let to_client = dp.reason(Reason::ToClient)?;
    let vxlan_passed = dp.reason(Reason::PassVxlan)?;

    let floor = rows[0].1.median.max(1) as f64;
    println!();
    println!("swarmlb datapath, BPF_PROG_TEST_RUN, repeat=1 per sample, kernel-measured ns/packet");
    println!("{:<24} {:>7} {:>7} {:>7} {:>8} {:>6}  path", "case", "median", "min", "max", "x floor", "n");
    println!("{}", "-".repeat(90));
    for (name, s, note) in &rows {
        println!(
            "{:<24} {:>7} {:>7} {:>7} {:>8.2} {:>6}  {}",
            name,
            s.median,
            s.min,
            s.max,
            s.median as f64 / floor,
            s.n,
            note
        );
    }
    println!();
    println!(
        "check: to_backend +{to_backend} (new + confirm + established), to_client {to_client}, pass_vxlan {vxlan_passed}; {} established connections; {} ms",
        dp.table_sizes()?.0 / 2,
        started.elapsed().as_millis()
    );
    Ok(())
}
