//! ns per packet of the XDP datapath under BPF_PROG_TEST_RUN, against the `swarmlb_pass` floor.
//!
//! Every sample is one BPF_PROG_TEST_RUN with repeat = 1: with repeat > 1 the kernel reruns the
//! program on the *same*, already translated buffer, so every run after the first would measure
//! a different path. The kernel's own `duration` is used (it excludes the syscall), so a sample
//! is the program plus the kernel's timer reads; the floor carries the same overhead, hence the
//! ratios. Bounded: SAMPLES per case and a TIME_LIMIT overall. Needs root.

use std::time::{Duration, Instant};

use lb_common::{MALFORMED_PASS, PROTO_BIT_TCP, PROTO_TCP, Reason, SERVICE_OVERLAY, Service, Settings, maps};
use tests::{frames::*, testrun::*};

/// Samples per case; new flows are fewer so they stay well inside the default SNAT port range
/// (16384 ports towards the one backend).
const SAMPLES: usize = 10_000;
const NEW_FLOW_SAMPLES: usize = 5_000;
const TIME_LIMIT: Duration = Duration::from_secs(8);
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
    dp.set_settings(Settings { malformed_policy: MALFORMED_PASS, snat_port_min: 0, snat_port_max: 0, vxlan_port: 0, _pad: 0 })?;
    dp.set_fe_port(80, PROTO_BIT_TCP)?;
    dp.set_frontend(VIP, 80, PROTO_TCP, 1)?;
    dp.set_service(1, Service { snat_addr: LB_LAN, flags: 0, active_backends: 1, mss: 0, _pad: 0 })?;
    dp.set_backend(1, BACKEND_LAN, 8080)?;
    dp.set_maglev(1, &[1])?;
    // The same backend behind an overlay service: replies get their L4 checksum from scratch.
    dp.set_fe_port(81, PROTO_BIT_TCP)?;
    dp.set_frontend(VIP, 81, PROTO_TCP, 2)?;
    dp.set_service(2, Service { snat_addr: LB_LAN, flags: SERVICE_OVERLAY, active_backends: 1, mss: 0, _pad: 0 })?;
    dp.set_backend(2, BACKEND_LAN, 8080)?;
    dp.set_maglev(2, &[2])?;
    const VNI: u32 = 4096;
    dp.add_overlay(VNI)?;
    let ifindex = net.lan.ifindex;
    let started = Instant::now();

    let syn = |src: [u8; 4], sport: u16| Spec::tcp(src, sport, VIP, 80, SYN).macs(CLIENT_MAC, LAN_MAC).build();
    // One established connection, for the established and reply cases.
    let first = dp.run(&syn(CLIENT, 1000), ifindex)?;
    anyhow::ensure!(first.action == XDP_TX, "setup SYN not translated: action {}", first.action);
    let snat_port = parse_and_verify(&first.frame)?.sport;
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
    let overlay_reply_1400 = Spec::tcp(BACKEND_LAN, 8080, LB_LAN, overlay_port, ACK | PSH)
        .macs(BACKEND_LAN_MAC, LAN_MAC)
        .payload(&payload_1400)
        .build();
    let vxlan = Spec::udp([198, 18, 0, 60], 51000, LB_LAN, 4789)
        .macs(CLIENT_MAC, LAN_MAC)
        .payload(&[&vxlan_header(0x08, VNI)[..], &Spec::tcp([198, 19, 10, 2], 1, [198, 19, 10, 3], 2, ACK).build()].concat())
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
            anyhow::ensure!(out.action == expect, "{name}: action {} instead of {expect}", out.action);
            v.push(out.duration_ns);
        }
        anyhow::ensure!(!v.is_empty(), "{name}: no sample within the time limit");
        rows.push((name, stats(v), note));
        Ok(())
    };
    let before_new = dp.reason(Reason::ToBackend)?;
    measure("swarmlb_pass (floor)", maps::PROG_PASS, &mut |_| syn(CLIENT, 1000), XDP_PASS, SAMPLES, "reads the Ethernet header")?;
    measure("passed, not a frontend", maps::PROG_LB, &mut |_| passed.clone(), XDP_PASS, SAMPLES, "parse + fe_ports lookup")?;
    measure(
        "new TCP flow",
        maps::PROG_LB,
        &mut |i| syn([198, 18, 1, 1 + (i / 60000) as u8], 1024 + (i % 60000) as u16),
        XDP_TX,
        NEW_FLOW_SAMPLES,
        "maglev + 2 inserts + FIB",
    )?;
    measure("established flow", maps::PROG_LB, &mut |_| established.clone(), XDP_TX, SAMPLES, "1 lookup, cached next hop")?;
    measure("reply to client", maps::PROG_LB, &mut |_| reply.clone(), XDP_TX, SAMPLES, "1 lookup, cached next hop")?;
    measure("reply, 1400 B payload", maps::PROG_LB, &mut |_| reply_1400.clone(), XDP_TX, SAMPLES, "incremental csum (same as above)")?;
    measure(
        "overlay reply, 1400 B",
        maps::PROG_LB,
        &mut |_| overlay_reply_1400.clone(),
        XDP_TX,
        SAMPLES,
        "+ L4 checksum from scratch",
    )?;
    measure("VXLAN, known VNI", maps::PROG_LB, &mut |_| vxlan.clone(), XDP_PASS, SAMPLES, "parse + vxlan header + overlays lookup")?;
    let to_backend = dp.reason(Reason::ToBackend)? - before_new;
    let to_client = dp.reason(Reason::ToClient)?;
    let vxlan_passed = dp.reason(Reason::PassVxlan)?;

    let floor = rows[0].1.median.max(1) as f64;
    println!();
    println!("swarmlb datapath, BPF_PROG_TEST_RUN, repeat=1 per sample, kernel-measured ns/packet");
    println!("{:<24} {:>7} {:>7} {:>7} {:>8} {:>6}  {}", "case", "median", "min", "max", "x floor", "n", "path");
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
        "check: to_backend +{to_backend} (new + established), to_client {to_client}, pass_vxlan {vxlan_passed}; {} connections in the table; {} ms",
        dp.flows()?.len() / 2,
        started.elapsed().as_millis()
    );
    Ok(())
}
