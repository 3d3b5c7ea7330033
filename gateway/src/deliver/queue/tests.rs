use super::*;
use fanout_proto::encode::{Encoder, LabelSet};
use std::collections::BTreeMap;

/// `n` one-sample records, each a distinct series.
fn records(n: usize, tag: &str) -> (Bytes, u32) {
    let req = fanout_proto::v1::WriteRequest {
        timeseries: (0..n)
            .map(|i| fanout_proto::v1::TimeSeries {
                labels: vec![fanout_proto::v1::Label {
                    name: "__name__".into(),
                    value: format!("{tag}_{i}"),
                }],
                samples: vec![fanout_proto::v1::Sample {
                    value: i as f64,
                    timestamp: 1,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let body = Bytes::from(prost::Message::encode_to_vec(&req));
    let mut series = Vec::new();
    fanout_proto::scan::scan_v1(&body, &Default::default(), &mut series).unwrap();
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    for s in &series {
        enc.encode_series(s.view(&body), &LabelSet::default(), &mut out);
    }
    (out.freeze(), n as u32)
}

fn chunk(n: usize, tag: &str, at: Instant) -> Chunk {
    let (records, samples) = records(n, tag);
    Chunk {
        records,
        samples,
        series: samples,
        enqueued: at,
        permit: None,
        packed: None,
        push: 0,
        owners: ChunkOwners::One(0),
        wire: 0,
        newest: 1,
    }
}

fn config() -> CoreConfig {
    CoreConfig {
        max_samples: 10,
        deadline: Duration::from_secs(1),
        max_concurrency: 2,
        max_backoff: Duration::from_secs(5),
        queue_bytes: 1 << 20,
        lanes: None,
        max_bytes: None,
        grow: false,
    }
}

fn ok() -> SendResult {
    SendResult::Status {
        status: 204,
        retry_after: None,
        body: String::new(),
    }
}

/// `d` was answered 204 at `now`, at once.
fn delivered(core: &mut TargetCore, d: &Dispatch, now: Instant) {
    core.on_result(
        d.lane,
        d.batch,
        &ok(),
        Duration::ZERO,
        now,
        SystemTime::now(),
    );
}

/// Series names of encoded records, in order.
fn decode_records(records: &Bytes) -> Vec<String> {
    let body = Bytes::from(fanout_proto::snappy::compress(records));
    decode(&body)
}

fn decode(body: &Bytes) -> Vec<String> {
    let raw = fanout_proto::snappy::decompress(body, 1 << 20).unwrap();
    let req: fanout_proto::v1::WriteRequest = prost::Message::decode(raw).unwrap();
    req.timeseries
        .into_iter()
        .map(|t| t.labels[0].value.clone())
        .collect()
}

#[test]
fn deliver_queue_batches_when_full_or_after_deadline() {
    let t0 = Instant::now();
    let mut core = TargetCore::new("t", config(), 1);
    core.push(0, chunk(4, "a", t0), &mut DropOldest);
    assert!(core.poll(t0).is_none(), "not full, deadline not reached");
    assert_eq!(core.next_wakeup(), Some(t0 + Duration::from_secs(1)));
    core.push(0, chunk(8, "b", t0), &mut DropOldest);
    // 12 samples >= 10: a full batch of 10, split inside the second chunk.
    let d = core.poll(t0).expect("full batch");
    assert_eq!(d.samples, 10);
    let names = decode(&d.body);
    assert_eq!(names.len(), 10);
    assert_eq!(names[0], "a_0");
    assert_eq!(names[9], "b_5");
    assert_eq!(core.queue_samples(), 2);
    // One batch in flight per lane: nothing more on lane 0 until the result.
    assert!(core.poll(t0).is_none());
    let ev = core.on_result(
        0,
        d.batch,
        &ok(),
        Duration::from_millis(5),
        t0,
        SystemTime::now(),
    );
    assert!(matches!(ev, Event::Sent { samples: 10, .. }));
    assert!(core.poll(t0 + Duration::from_millis(999)).is_none());
    let d = core
        .poll(t0 + Duration::from_secs(1))
        .expect("deadline batch");
    assert_eq!(decode(&d.body), vec!["b_6", "b_7"]);
    core.on_result(
        0,
        d.batch,
        &ok(),
        Duration::from_millis(5),
        t0,
        SystemTime::now(),
    );
    assert!(core.is_idle());
    assert_eq!(core.counters().samples_sent, 12);
    assert_eq!(core.counters().requests_sent, 2);
    assert_eq!(core.state(t0), "healthy");
}

#[test]
fn deliver_queue_retries_same_bytes_with_backoff_then_drops_on_4xx() {
    let t0 = Instant::now();
    let mut core = TargetCore::new("t", config(), 7);
    core.push(1, chunk(10, "x", t0), &mut DropOldest);
    let d1 = core.poll(t0).unwrap();
    let err = SendResult::Status {
        status: 503,
        retry_after: None,
        body: "upstream down".into(),
    };
    let ev = core.on_result(
        d1.lane,
        d1.batch,
        &err,
        Duration::from_millis(1),
        t0,
        SystemTime::now(),
    );
    assert!(matches!(
        ev,
        Event::Retrying {
            status: Some(503),
            ..
        }
    ));
    assert_eq!(core.state(t0), "retrying");
    assert!(
        core.poll(t0 + Duration::from_millis(29)).is_none(),
        "first retry after 30ms"
    );
    let wake = core.next_wakeup().unwrap();
    assert!(wake >= t0 + Duration::from_millis(30) && wake <= t0 + Duration::from_millis(38));
    let d2 = core.poll(wake).unwrap();
    assert_eq!(d2.body, d1.body, "compressed once, same bytes");
    assert_eq!(d2.attempt, 2);
    assert_eq!(core.counters().retries, 1);
    // Retry-After is honoured.
    let ra = SendResult::Status {
        status: 429,
        retry_after: Some(Duration::from_secs(2)),
        body: String::new(),
    };
    core.on_result(
        d2.lane,
        d2.batch,
        &ra,
        Duration::from_millis(1),
        wake,
        SystemTime::now(),
    );
    assert!(core.poll(wake + Duration::from_millis(1999)).is_none());
    let d3 = core.poll(wake + Duration::from_secs(2)).unwrap();
    assert_eq!(core.state(t0 + Duration::from_secs(31)), "failing");
    let bad = SendResult::Status {
        status: 400,
        retry_after: None,
        body: "out of order sample".into(),
    };
    let ev = core.on_result(
        d3.lane,
        d3.batch,
        &bad,
        Duration::from_millis(1),
        wake,
        SystemTime::now(),
    );
    assert!(matches!(
        ev,
        Event::Dropped {
            status: 400,
            samples: 10,
            ..
        }
    ));
    let c = core.counters();
    assert_eq!(c.dropped_rejected, 10);
    assert_eq!(c.failures.get("503"), Some(&1));
    assert_eq!(c.failures.get("429"), Some(&1));
    assert_eq!(c.failures.get("400"), Some(&1));
    let last = core.last_error().unwrap();
    assert_eq!(last.status, Some(400));
    assert!(
        last.message.contains("out of order sample"),
        "{}",
        last.message
    );
    assert!(core.is_idle());
    // A stale result changes nothing.
    assert_eq!(
        core.on_result(0, 999, &ok(), Duration::ZERO, wake, SystemTime::now()),
        Event::Stale
    );
}

/// A failing target whose batch waits out a long backoff is probed with an
/// empty write; a 2xx makes the batch due at once; `Retry-After` holds the
/// probes back.
#[test]
fn deliver_queue_a_recovery_probe_releases_the_waiting_retries() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut core = TargetCore::new("t", config(), 7);
    core.push(1, chunk(10, "x", t0), &mut DropOldest);
    let unavailable = |retry_after| SendResult::Status {
        status: 503,
        retry_after,
        body: String::new(),
    };
    // Fail every attempt and probe until the batch's backoff is at the
    // 5 s cap (attempt 10: 30 ms doubled 8 times is past it).
    let mut now = t0;
    let mut d = core.poll(now).unwrap();
    let first = d.body.clone();
    let mut probes = 0;
    while d.probe || d.attempt < 10 {
        probes += u32::from(d.probe);
        assert!(d.probe || d.body == first);
        core.on_result(
            d.lane,
            d.batch,
            &unavailable(None),
            ms(1),
            now,
            SystemTime::now(),
        );
        now = core.next_wakeup().unwrap();
        d = core.poll(now).unwrap();
    }
    assert!(probes > 0, "long backoffs are probed");
    core.on_result(
        d.lane,
        d.batch,
        &unavailable(None),
        ms(1),
        now,
        SystemTime::now(),
    );
    let at = core.next_wakeup().unwrap();
    assert!(
        at <= now + PROBE_EVERY,
        "probed within 250 ms, not after the 5 s backoff"
    );
    now = at;
    let d = core.poll(now).unwrap();
    assert!(d.probe);
    assert_eq!((d.samples, &d.body[..]), (0, &[0u8][..]), "an empty write");
    assert!(core.poll(now).is_none(), "one probe at a time");
    // The probe fails: the next one waits PROBE_EVERY.
    core.on_result(
        d.lane,
        d.batch,
        &unavailable(None),
        ms(1),
        now,
        SystemTime::now(),
    );
    assert!(core.poll(now + ms(249)).is_none());
    now += PROBE_EVERY;
    let p = core.poll(now).unwrap();
    assert!(p.probe);
    // A Retry-After on a probe holds the next one back for as long.
    let ra = unavailable(Some(Duration::from_secs(2)));
    core.on_result(p.lane, p.batch, &ra, ms(1), now, SystemTime::now());
    let mut t = now;
    while t < now + Duration::from_secs(2) {
        assert!(core.poll(t).is_none(), "probe before Retry-After");
        t += ms(50);
    }
    now += Duration::from_secs(2);
    let p = core.poll(now).unwrap();
    assert!(p.probe, "a probe once Retry-After passed");
    // The endpoint is back: the waiting batch goes at once, same bytes.
    let ev = core.on_result(p.lane, p.batch, &ok(), ms(1), now, SystemTime::now());
    assert_eq!(ev, Event::Probed { recovered: true });
    let r = core.poll(now).unwrap();
    assert!(!r.probe && r.samples == 10);
    assert_eq!(r.body, first, "the same bytes");
    // It fails again (the endpoint takes empty writes, not data): no more
    // probes until a batch is delivered, its backoff alone decides.
    core.on_result(
        r.lane,
        r.batch,
        &unavailable(None),
        ms(1),
        now,
        SystemTime::now(),
    );
    assert!(core.probe_at().is_none(), "probes spent");
    let at = core.next_wakeup().unwrap();
    assert!(at >= now + Duration::from_secs(5), "the capped backoff");
    let r = core.poll(at).unwrap();
    assert!(!r.probe);
    delivered(&mut core, &r, at);
    assert!(core.is_idle());
    assert_eq!(core.counters().probes, u64::from(probes) + 3);
}

#[test]
fn deliver_queue_memory_bound_drops_oldest_and_never_blocks() {
    let t0 = Instant::now();
    let mut cfg = config();
    let one = chunk(1, "m", t0).records.len() as u64;
    cfg.queue_bytes = 3 * one;
    let mut core = TargetCore::new("t", cfg, 1);
    for i in 0..5u32 {
        core.push(
            i,
            chunk(1, "m", t0 + Duration::from_millis(u64::from(i))),
            &mut DropOldest,
        );
    }
    assert_eq!(core.queue_bytes(), 3 * one);
    assert_eq!(core.counters().dropped_queue_full, 2);
    // The survivors are the newest three.
    assert_eq!(
        core.oldest_queued(t0 + Duration::from_millis(10)),
        Duration::from_millis(8)
    );

    struct Spill(u32);
    impl Overflow for Spill {
        fn overflow(&mut self, _: u32, _: Chunk) -> Option<u64> {
            self.0 += 1;
            Some(u64::from(self.0))
        }
    }
    let mut spill = Spill(0);
    core.push(0, chunk(1, "m", t0 + Duration::from_millis(9)), &mut spill);
    assert_eq!(spill.0, 1);
    assert_eq!(
        core.counters().dropped_queue_full,
        2,
        "spilled, not dropped"
    );
}

/// The test config with a bound of two chunks of `one` bytes.
fn cfg_own(one: u64) -> CoreConfig {
    CoreConfig {
        queue_bytes: 2 * one,
        ..config()
    }
}

#[test]
fn deliver_queue_a_shared_chunk_stays_past_the_bound_while_the_overflow_keeps_shared() {
    // Chunks given to other targets too: while the overflow says to keep
    // them (this target in step with the others, the budget with room),
    // they stay queued past the bound, since spilling them would free
    // nothing; a chunk of this target alone still goes out.
    struct Keep(bool, u32);
    impl Overflow for Keep {
        fn overflow(&mut self, _: u32, _: Chunk) -> Option<u64> {
            self.1 += 1;
            Some(u64::from(self.1))
        }
        fn keeps_shared(&self) -> bool {
            self.0
        }
    }
    let t0 = Instant::now();
    let one = chunk(1, "m", t0).records.len() as u64;
    let mut core = TargetCore::new("t", cfg_own(one), 1);
    let slots = Packed::slots(4);
    let shared = |i: u32| {
        let mut c = chunk(1, "m", t0 + Duration::from_millis(u64::from(i)));
        c.packed = Some(Packed::new(slots.clone(), i));
        c
    };
    let mut keep = Keep(true, 0);
    for i in 0..4 {
        core.push(i, shared(i), &mut keep);
    }
    assert_eq!(keep.1, 0, "nothing went out");
    assert_eq!(core.queue_bytes(), 4 * one);
    // No longer kept: the oldest go out until the bound holds.
    keep.0 = false;
    core.push(0, chunk(1, "m", t0 + Duration::from_millis(5)), &mut keep);
    assert_eq!(keep.1, 3);
    assert_eq!(core.queue_bytes(), 2 * one);
    assert_eq!(core.counters().spilled, 3);
    // A newer chunk waits behind a kept shared one (spilling it first
    // would put it on disk ahead of older data of its lane).
    keep.0 = true;
    core.push(0, chunk(1, "m", t0 + Duration::from_millis(6)), &mut keep);
    assert_eq!(keep.1, 3);
    assert_eq!(core.queue_bytes(), 3 * one);
    // Chunks of this target alone are never kept past the bound.
    let mut own = TargetCore::new("own", cfg_own(one), 1);
    let mut keep = Keep(true, 0);
    for i in 0..4 {
        own.push(
            i,
            chunk(1, "m", t0 + Duration::from_millis(u64::from(i))),
            &mut keep,
        );
    }
    assert_eq!(keep.1, 2);
    assert_eq!(own.queue_bytes(), 2 * one);
}

/// A fake disk queue: keeps what overflowed, hands it back in seq order.
/// Like the spill, it keeps odd seqs as their snappy part (what goes on the
/// wire, `Chunk::wire`) and even ones as records (as releases before
/// 2026-12-07 wrote them), so the tests and the sim see both read back.
#[derive(Default)]
struct Disk(Vec<DiskChunk>);

impl Overflow for Disk {
    fn overflow(&mut self, lane: u32, mut chunk: Chunk) -> Option<u64> {
        let seq = self.0.len() as u64 + 1;
        let (records, wire) = if seq % 2 == 1 {
            (chunk.part(), chunk.raw_len() as u32)
        } else {
            assert!(chunk.unwire(), "a part the queue kept decompresses");
            (chunk.records, 0)
        };
        self.0.push(DiskChunk {
            seq,
            tag: u64::from(lane),
            records,
            wire,
            samples: chunk.samples,
            enqueued_ms: 0,
        });
        Some(seq)
    }
}

#[test]
fn deliver_queue_shutdown_drain_never_acks_records_read_back_but_not_delivered() {
    // SIGTERM while disk records are read back and their batch fails:
    // they are still on disk, so the ack must not pass them (it did:
    // every record read back was acked and lost on restart).
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.queue_bytes = 2 * chunk(1, "s0", t0).records.len() as u64;
    cfg.deadline = Duration::ZERO;
    let mut core = TargetCore::new("t", cfg, 1);
    let mut disk = Disk::default();
    for i in 0..5u64 {
        core.push(0, chunk(1, &format!("s{i}"), t0), &mut disk);
    }
    let recs: Vec<DiskChunk> = disk.0.clone();
    core.reload(recs, 3, true, t0, 0);
    let d = core.poll(t0).expect("a disk batch");
    let fail = SendResult::Connect("refused".into());
    core.on_result(
        d.lane,
        d.batch,
        &fail,
        Duration::ZERO,
        t0,
        SystemTime::now(),
    );
    assert_eq!(core.disk_ack(), 0);
    let memory = core.drain_memory();
    assert_eq!(memory.len(), 2, "the two memory chunks go to disk");
    assert_eq!(core.disk_ack(), 0, "records 1-3 were never delivered");
    assert_eq!(core.reload_room(), None);
    core.reload(disk.0.clone(), 5, true, t0, 0);
    assert_eq!(core.disk_ack(), 0);
}

#[test]
fn deliver_queue_undrain_reads_every_record_back_in_order() {
    // A removed target revived while its queue went to disk: it must
    // read back everything unacked (also what was read back before the
    // drain) before newer data, and deliver it in order.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.queue_bytes = 2 * chunk(1, "s0", t0).records.len() as u64;
    cfg.deadline = Duration::ZERO;
    let mut core = TargetCore::new("t", cfg, 1);
    let mut disk = Disk::default();
    for i in 0..5u64 {
        core.push(0, chunk(1, &format!("s{i}"), t0), &mut disk);
    }
    core.reload(disk.0.clone(), 3, true, t0, 0);
    let memory = core.drain_memory();
    for (lane, c) in memory {
        disk.overflow(lane, c);
    }
    assert_eq!(disk.0.len(), 5);
    core.undrain(5);
    core.push(0, chunk(1, "s5", t0), &mut disk);
    assert!(core.reload_room().is_some(), "reads back again");
    // The disk queue was rewound: every unacked record comes again.
    core.reload(disk.0.clone(), 5, true, t0, 0);
    let mut names = Vec::new();
    while let Some(d) = core.poll(t0) {
        names.extend(decode(&d.body));
        delivered(&mut core, &d, t0);
    }
    assert_eq!(names, vec!["s0_0", "s1_0", "s2_0", "s3_0", "s4_0", "s5_0"]);
    assert_eq!(core.disk_ack(), 5);
    assert!(core.is_idle());
}

#[test]
fn deliver_queue_disk_records_go_before_newer_memory_of_their_lane() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.queue_bytes = 2 * chunk(1, "s0", t0).records.len() as u64;
    cfg.deadline = Duration::ZERO;
    let mut core = TargetCore::new("t", cfg, 1);
    let mut disk = Disk::default();
    for i in 0..5u64 {
        core.push(
            0,
            chunk(1, &format!("s{i}"), t0 + Duration::from_millis(i)),
            &mut disk,
        );
    }
    assert_eq!(disk.0.len(), 3, "the oldest three went to disk");
    assert_eq!(core.counters().dropped_queue_full, 0);
    // The lane waits for its disk records: memory is not sent first.
    assert!(core.poll(t0 + Duration::from_secs(1)).is_none());
    assert!(core.reload_room().is_some());
    let recs: Vec<DiskChunk> = disk.0.drain(..2).collect();
    core.reload(recs, 3, false, t0, 0);
    let mut names = Vec::new();
    let now = t0 + Duration::from_secs(1);
    let step = |core: &mut TargetCore, names: &mut Vec<String>| {
        let d = core.poll(now)?;
        names.extend(decode(&d.body));
        delivered(core, &d, now);
        Some(())
    };
    while step(&mut core, &mut names).is_some() {}
    assert_eq!(names, vec!["s0_0", "s1_0"], "seq 3 still on disk");
    assert_eq!(core.disk_ack(), 2);
    let recs: Vec<DiskChunk> = std::mem::take(&mut disk.0);
    core.reload(recs, 3, false, now, 0);
    core.reload(Vec::new(), 3, true, now, 0);
    while step(&mut core, &mut names).is_some() {}
    assert_eq!(names, vec!["s0_0", "s1_0", "s2_0", "s3_0", "s4_0"]);
    assert_eq!(core.disk_ack(), 3);
    assert!(core.is_idle());
}

#[test]
fn deliver_queue_lane_override_keeps_lanes_and_caps_concurrency() {
    // A backlog queued under 4 lanes resumed by a target whose
    // maxConcurrency is now 2: 4 lanes (tags map as before), at most 2
    // requests in flight.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.lanes = Some(4);
    cfg.deadline = Duration::ZERO;
    let mut core = TargetCore::new("t", cfg, 1);
    assert_eq!(core.lanes(), 4);
    let mut most = 0;
    for i in 0..50u64 {
        let now = t0 + Duration::from_secs(i);
        for shard in 0..4 {
            core.push(shard, chunk(10, &format!("s{shard}"), now), &mut DropOldest);
        }
        let mut sent = Vec::new();
        while let Some(d) = core.poll(now) {
            sent.push(d);
        }
        most = most.max(sent.len());
        for d in sent {
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::from_millis(1),
                now,
                SystemTime::now(),
            );
        }
    }
    assert_eq!(
        most, 2,
        "the limit grows to maxConcurrency, not to the lanes"
    );
}

#[test]
fn deliver_queue_lanes_keep_order_and_limit_concurrency() {
    let t0 = Instant::now();
    let mut core = TargetCore::new("t", config(), 1);
    core.push(0, chunk(10, "l0", t0), &mut DropOldest);
    core.push(1, chunk(10, "l1", t0), &mut DropOldest);
    core.push(0, chunk(10, "l0b", t0), &mut DropOldest);
    let a = core.poll(t0).unwrap();
    assert!(core.poll(t0).is_none(), "limit starts at 1");
    assert_eq!(
        core.next_wakeup(),
        None,
        "at the concurrency limit only a result wakes the sender"
    );
    let fail = SendResult::Connect("refused".into());
    core.on_result(
        a.lane,
        a.batch,
        &fail,
        Duration::ZERO,
        t0,
        SystemTime::now(),
    );
    // Lane 0 retries its head batch before anything newer of lane 0.
    let later = t0 + Duration::from_secs(1);
    let mut lanes_seen = Vec::new();
    while let Some(d) = core.poll(later) {
        lanes_seen.push((d.lane, decode(&d.body)[0].clone()));
        core.on_result(
            d.lane,
            d.batch,
            &ok(),
            Duration::from_millis(1),
            later,
            SystemTime::now(),
        );
    }
    let lane0: Vec<_> = lanes_seen
        .iter()
        .filter(|(l, _)| *l == 0)
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(lane0, vec!["l0_0", "l0b_0"]);
    assert!(core.is_idle());
    // Pause stops dispatch; flush sends partial batches at once.
    core.push(0, chunk(1, "p", later), &mut DropOldest);
    core.set_paused(true);
    assert!(core.poll(later + Duration::from_secs(5)).is_none());
    assert_eq!(core.state(later), "paused");
    core.set_paused(false);
    core.set_flush(true);
    assert!(core.poll(later).is_some());
}

/// Records of one series `name`, one sample per value.
fn series_records(name: &str, values: &[u64]) -> Bytes {
    let req = fanout_proto::v1::WriteRequest {
        timeseries: values
            .iter()
            .map(|&v| fanout_proto::v1::TimeSeries {
                labels: vec![fanout_proto::v1::Label {
                    name: "__name__".into(),
                    value: name.into(),
                }],
                samples: vec![fanout_proto::v1::Sample {
                    value: v as f64,
                    timestamp: 1,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Bytes::from(prost::Message::encode_to_vec(&req))
}

/// (series name, value) of every sample in a batch body, in order.
fn samples_of(body: &Bytes) -> Vec<(String, u64)> {
    let raw = fanout_proto::snappy::decompress(body, 1 << 24).unwrap();
    let req: fanout_proto::v1::WriteRequest = prost::Message::decode(raw).unwrap();
    req.timeseries
        .into_iter()
        .flat_map(|t| {
            let name = t.labels[0].value.clone();
            t.samples
                .into_iter()
                .map(move |s| (name.clone(), s.value as u64))
        })
        .collect()
}

#[test]
fn deliver_queue_one_group_fills_a_batch_from_every_lane() {
    // 16 lanes, limit 1: a batch takes the oldest data of every lane,
    // so 16 chunks of 125 samples make one full batch at once instead of
    // 16 partial ones waiting for the deadline.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.max_samples = 2000;
    cfg.max_concurrency = 16;
    let mut core = TargetCore::new("t", cfg, 1);
    assert_eq!(core.groups(), 1);
    for lane in 0..16u32 {
        core.push(lane, chunk(125, &format!("l{lane}"), t0), &mut DropOldest);
    }
    let d = core.poll(t0).expect("a full batch at once");
    assert_eq!(d.samples, 2000);
    assert_eq!(core.queue_samples(), 0);
    // Every lane is busy until it is delivered: nothing else goes.
    core.push(3, chunk(2000, "more", t0), &mut DropOldest);
    assert!(core.poll(t0).is_none());
    core.on_result(
        d.lane,
        d.batch,
        &ok(),
        Duration::from_millis(2),
        t0,
        SystemTime::now(),
    );
    assert_eq!(core.poll(t0).expect("next").samples, 2000);
}

#[test]
fn deliver_queue_series_larger_than_max_samples_goes_alone_without_underflow() {
    // A series with more samples than maxSamplesPerSend makes a batch of
    // its own (it cannot be split); what follows goes in the next batch.
    let t0 = Instant::now();
    let mut core = TargetCore::new("t", config(), 1);
    let big: Vec<u64> = (0..25).collect();
    let records = series_records("big", &big);
    core.push(
        0,
        Chunk {
            records: records.clone(),
            samples: 25,
            series: 25,
            enqueued: t0,
            permit: None,
            packed: None,
            push: 0,
            owners: ChunkOwners::One(0),
            wire: 0,
            newest: 1,
        },
        &mut DropOldest,
    );
    core.push(0, chunk(3, "after", t0), &mut DropOldest);
    let d = core.poll(t0).expect("full");
    assert_eq!(d.samples, 10, "records are one sample each: 10 fit");
    delivered(&mut core, &d, t0);
    let mut total = d.samples;
    while let Some(d) = core.poll(t0 + Duration::from_secs(2)) {
        total += d.samples;
        delivered(&mut core, &d, t0);
    }
    assert_eq!(total, 28);
    // One record with 25 samples (a histogram-heavy series): alone.
    let req = fanout_proto::v1::WriteRequest {
        timeseries: vec![fanout_proto::v1::TimeSeries {
            labels: vec![fanout_proto::v1::Label {
                name: "__name__".into(),
                value: "huge".into(),
            }],
            samples: (0..25)
                .map(|i| fanout_proto::v1::Sample {
                    value: i as f64,
                    timestamp: i,
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let huge = Bytes::from(prost::Message::encode_to_vec(&req));
    for _ in 0..2 {
        core.push(
            0,
            Chunk {
                records: huge.clone(),
                samples: 25,
                series: 1,
                enqueued: t0,
                permit: None,
                packed: None,
                push: 0,
                owners: ChunkOwners::One(0),
                wire: 0,
                newest: 1,
            },
            &mut DropOldest,
        );
    }
    let a = core.poll(t0).expect("first huge series alone");
    assert_eq!(a.samples, 25);
    delivered(&mut core, &a, t0);
    let b = core.poll(t0).expect("second");
    assert_eq!(b.samples, 25);
}

#[test]
fn deliver_queue_shutdown_drain_puts_a_batch_back_under_each_lane() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.max_concurrency = 4;
    let mut core = TargetCore::new("t", cfg, 1);
    core.push(0, chunk(3, "a", t0), &mut DropOldest);
    core.push(
        1,
        chunk(3, "b", t0 + Duration::from_millis(1)),
        &mut DropOldest,
    );
    core.push(
        0,
        chunk(3, "c", t0 + Duration::from_millis(2)),
        &mut DropOldest,
    );
    core.push(
        1,
        chunk(3, "d", t0 + Duration::from_millis(3)),
        &mut DropOldest,
    );
    let d = core.poll(t0).expect("full batch over lanes 0 and 1");
    assert_eq!(
        decode(&d.body),
        ["a_0", "a_1", "a_2", "b_0", "b_1", "b_2", "c_0", "c_1", "c_2", "d_0"]
    );
    let fail = SendResult::Connect("refused".into());
    core.on_result(
        d.lane,
        d.batch,
        &fail,
        Duration::ZERO,
        t0,
        SystemTime::now(),
    );
    let drained: Vec<(u32, Vec<String>)> = core
        .drain_memory()
        .into_iter()
        .map(|(lane, c)| {
            let mut raw = BytesMut::new();
            raw.extend_from_slice(&c.records);
            let body = Bytes::from(fanout_proto::snappy::compress(&raw));
            (lane, decode(&body))
        })
        .collect();
    let lane = |n: u32| -> Vec<String> {
        drained
            .iter()
            .filter(|(l, _)| *l == n)
            .flat_map(|(_, names)| names.clone())
            .collect()
    };
    assert_eq!(lane(0), ["a_0", "a_1", "a_2", "c_0", "c_1", "c_2"]);
    assert_eq!(lane(1), ["b_0", "b_1", "b_2", "d_0", "d_1", "d_2"]);
    assert!(core.memory_empty());
}

#[test]
fn deliver_queue_groups_follow_load() {
    // A backlog grows the limit (and so the lane groups); a load that a
    // quarter of them carries shrinks it again within seconds.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.max_samples = 100;
    cfg.max_concurrency = 16;
    cfg.deadline = Duration::from_millis(50);
    let mut core = TargetCore::new("t", cfg, 1);
    let mut now = t0;
    let mut most = 0;
    for _ in 0..200 {
        now += Duration::from_millis(10);
        for lane in 0..16 {
            core.push(lane, chunk(20, "x", now), &mut DropOldest);
        }
        let mut sent = Vec::new();
        while let Some(d) = core.poll(now) {
            sent.push(d);
        }
        for d in sent {
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::from_millis(10),
                now,
                SystemTime::now(),
            );
        }
        most = most.max(core.groups());
    }
    assert!(most >= 4, "grew under a backlog: {most}");
    for _ in 0..600 {
        now += Duration::from_millis(10);
        core.push(0, chunk(1, "slow", now), &mut DropOldest);
        while let Some(d) = core.poll(now) {
            core.on_result(
                d.lane,
                d.batch,
                &ok(),
                Duration::from_millis(10),
                now,
                SystemTime::now(),
            );
        }
    }
    assert_eq!(core.groups(), 1, "shrank at a light load");
}

#[test]
fn deliver_queue_targets_given_the_same_chunks_compress_each_once() {
    // Two targets given the same four chunks, which they batch differently
    // (another maxSamplesPerSend): every whole chunk is compressed once,
    // by whichever target sends it first, and both bodies decode to what
    // was queued.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.max_samples = 100;
    cfg.max_concurrency = 4;
    let mut a = TargetCore::new("a", cfg.clone(), 1);
    cfg.max_samples = 50;
    let mut b = TargetCore::new("b", cfg, 2);
    let slots = Packed::slots(4);
    let mut pushed = Vec::new();
    for lane in 0..4u32 {
        let mut c = chunk(
            25,
            &format!("l{lane}"),
            t0 + Duration::from_millis(lane.into()),
        );
        c.packed = Some(Packed::new(slots.clone(), lane));
        pushed.extend(decode_records(&c.records));
        a.push(lane, c.clone(), &mut DropOldest);
        b.push(lane, c, &mut DropOldest);
    }
    let da = a.poll(t0).unwrap();
    assert_eq!(da.samples, 100);
    assert!(
        slots.iter().all(|s| s.made().is_some()),
        "a compressed each chunk"
    );
    let parts: Vec<*const u8> = slots.iter().map(|s| s.made().unwrap().as_ptr()).collect();
    let mut got_b = Vec::new();
    while let Some(d) = b.poll(t0 + Duration::from_secs(2)) {
        got_b.extend(decode(&d.body));
        delivered(&mut b, &d, t0);
    }
    let again: Vec<*const u8> = slots.iter().map(|s| s.made().unwrap().as_ptr()).collect();
    assert_eq!(parts, again, "b reused a's parts");
    assert_eq!(decode(&da.body), pushed);
    assert_eq!(got_b, pushed);
}

#[test]
fn deliver_queue_a_shared_chunk_is_not_split_unless_it_alone_is_too_large() {
    // A chunk given to several targets goes whole into a batch, so its one
    // compressed part serves them all: a batch stops before a shared chunk
    // that does not fit (25 + 25 > 40). Only a shared chunk larger than a
    // batch on its own (60) is still cut.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.max_samples = 40;
    let mut core = TargetCore::new("t", cfg, 1);
    let slots = Packed::slots(3);
    let mut pushed = Vec::new();
    for (k, n) in [25, 25, 60].into_iter().enumerate() {
        let mut c = chunk(n, &format!("c{k}"), t0);
        c.packed = Some(Packed::new(slots.clone(), k as u32));
        pushed.extend(decode_records(&c.records));
        core.push(0, c, &mut DropOldest);
    }
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while let Some(d) = core.poll(t0 + Duration::from_secs(2)) {
        sizes.push(d.samples);
        got.extend(decode(&d.body));
        delivered(&mut core, &d, t0);
    }
    assert_eq!(sizes, [25, 25, 40, 20]);
    assert_eq!(got, pushed);
    assert!(slots[0].made().is_some() && slots[1].made().is_some());
}

mod sim {
    //! A randomized simulation of one target: pushes on random lanes,
    //! a memory bound that overflows to a (fake) disk read back later,
    //! attempts that succeed, fail and retry, or are rejected, pauses,
    //! live config changes, and time passing. Every sample must reach the
    //! target in order per series, exactly once unless its batch was
    //! rejected.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            lane: u32,
            n: u8,
        },
        /// One request given to several targets: a chunk for each lane of
        /// `mask` (the variants of several Deployments), their parts in one
        /// allocation of slots.
        Request {
            mask: u8,
            n: u8,
        },
        Advance {
            ms: u16,
        },
        Complete {
            pick: u8,
            outcome: u8,
        },
        /// One request through [`TargetCore::begin_cut`]: a chunk for each
        /// series of `mask` (series `s` hashes to `s`), cut into
        /// `1 << shards_log` shards, so a series' lane follows the width.
        Cut {
            mask: u16,
            n: u8,
            shards_log: u8,
        },
        Reload,
        Pause(bool),
        Reconfigure {
            max_concurrency: u8,
            max_samples: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..8, 1u8..6).prop_map(|(lane, n)| Op::Push { lane, n }),
            3 => (any::<u8>(), 1u8..4).prop_map(|(mask, n)| Op::Request { mask, n }),
            2 => (0u16..300).prop_map(|ms| Op::Advance { ms }),
            4 => (any::<u8>(), 0u8..11).prop_map(|(pick, outcome)| Op::Complete { pick, outcome }),
            4 => (any::<u16>(), 1u8..4, 0u8..4).prop_map(|(mask, n, shards_log)| Op::Cut { mask, n, shards_log }),
            1 => Just(Op::Reload),
            1 => any::<bool>().prop_map(Op::Pause),
            1 => (1u8..9, 1u8..12).prop_map(|(max_concurrency, max_samples)| Op::Reconfigure { max_concurrency, max_samples }),
        ]
    }

    /// A chunk of the sim: `n` records of one sample each.
    fn sim_chunk(
        records: Bytes,
        n: u8,
        now: Instant,
        packed: Option<Packed>,
        owners: ChunkOwners,
    ) -> Chunk {
        Chunk {
            records,
            samples: u32::from(n),
            series: u32::from(n),
            enqueued: now,
            permit: None,
            packed,
            push: 0,
            owners,
            wire: 0,
            newest: 1,
        }
    }

    struct World {
        core: TargetCore,
        disk: Disk,
        fed: usize,
        now: Instant,
        next_value: u64,
        flying: Vec<Dispatch>,
        delivered: BTreeMap<String, Vec<u64>>,
        rejected: BTreeSet<(String, u64)>,
        pushed: BTreeSet<(String, u64)>,
    }

    impl World {
        /// The next `n` values of series `name`, recorded as pushed.
        fn values(&mut self, name: &str, n: u8) -> Vec<u64> {
            let values: Vec<u64> = (0..u64::from(n)).map(|i| self.next_value + i).collect();
            self.next_value += u64::from(n);
            for &v in &values {
                self.pushed.insert((name.to_owned(), v));
            }
            values
        }

        fn poll(&mut self) {
            while let Some(d) = self.core.poll(self.now) {
                self.flying.push(d);
            }
        }

        fn complete(&mut self, at: usize, outcome: u8) {
            let d = self.flying.swap_remove(at);
            let result = match outcome {
                0..=5 => ok(),
                6 => SendResult::Status {
                    status: 400,
                    retry_after: None,
                    body: "bad".into(),
                },
                7 => SendResult::Timeout("no response within 1s".into()),
                8 => SendResult::Status {
                    status: 503,
                    retry_after: None,
                    body: String::new(),
                },
                // Too large: split and sent again (one series: dropped).
                9 => SendResult::Status {
                    status: 413,
                    retry_after: None,
                    body: "too big".into(),
                },
                _ => SendResult::Connect("refused".into()),
            };
            let ev = self.core.on_result(
                d.lane,
                d.batch,
                &result,
                Duration::from_millis(3),
                self.now,
                SystemTime::now(),
            );
            match ev {
                Event::Sent { samples, .. } => {
                    let got = samples_of(&d.body);
                    assert_eq!(got.len() as u32, samples);
                    for (name, v) in got {
                        self.delivered.entry(name).or_default().push(v);
                    }
                }
                Event::Dropped { .. } => {
                    self.rejected.extend(samples_of(&d.body));
                }
                Event::Retrying { .. } => {}
                Event::Probed { .. } => assert!(d.probe && d.samples == 0),
                Event::Stale => panic!("a dispatch in flight was stale"),
            }
        }

        fn reload(&mut self) {
            if self.core.reload_room().is_some() {
                let recs = self.disk.0[self.fed..].to_vec();
                self.fed = self.disk.0.len();
                self.core
                    .reload(recs, self.disk.0.len() as u64, true, self.now, 0);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn deliver_queue_sim_keeps_order_per_series_and_loses_nothing(
            ops in proptest::collection::vec(op(), 1..250),
            max_concurrency in 1u32..9,
            max_samples in 1u32..12,
            queue_records in 2u64..40,
            grow in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let one = series_records("L0", &[1]).len() as u64;
            let cfg = CoreConfig {
                max_samples,
                deadline: Duration::from_millis(100),
                max_concurrency,
                max_backoff: Duration::from_millis(200),
                queue_bytes: queue_records * one,
                lanes: None,
                max_bytes: None,
                grow,
            };
            let lanes = cfg.lanes();
            let mut w = World {
                core: TargetCore::new("t", cfg.clone(), 3),
                disk: Disk::default(),
                fed: 0,
                now: t0,
                next_value: 1,
                flying: Vec::new(),
                delivered: BTreeMap::new(),
                rejected: BTreeSet::new(),
                pushed: BTreeSet::new(),
            };
            for op in ops {
                match op {
                    Op::Push { lane, n } => {
                        // One series per lane: its order is the lane's.
                        let name = format!("L{}", lane % lanes);
                        let values = w.values(&name, n);
                        // A third of the chunks as if given to other
                        // targets too: they go out as a compressed part,
                        // also when split, retried or mixed with own
                        // chunks; a third as a failing target keeps them
                        // (held as that part, cut only once decompressed).
                        let kind = w.next_value % 3;
                        let packed = (kind == 0).then(|| Packed::new(Packed::slots(1), 0));
                        let mut chunk = sim_chunk(series_records(&name, &values), n, w.now, packed, ChunkOwners::One(0));
                        if kind == 1 {
                            chunk.wire = chunk.records.len() as u32;
                            chunk.records = fanout_proto::snappy::compress_part(&chunk.records);
                        }
                        w.core.push(lane, chunk, &mut w.disk);
                    }
                    Op::Request { mask, n } => {
                        let mut chunks = Vec::new();
                        for lane in (0..8u32).filter(|l| mask & (1 << l) != 0) {
                            let name = format!("L{}", lane % lanes);
                            let values = w.values(&name, n);
                            chunks.push((lane, series_records(&name, &values)));
                        }
                        let slots = Packed::slots(chunks.len());
                        w.core.begin_push();
                        for (k, (lane, records)) in chunks.into_iter().enumerate() {
                            let packed = Some(Packed::new(slots.clone(), k as u32));
                            let chunk = sim_chunk(records, n, w.now, packed, ChunkOwners::One(0));
                            w.core.push(lane, chunk, &mut w.disk);
                        }
                    }
                    Op::Cut { mask, n, shards_log } => {
                        let shards = 1u32 << shards_log;
                        w.core.begin_cut(shards, w.now);
                        for s in (0..16u32).filter(|s| mask & (1 << s) != 0) {
                            let name = format!("S{s}");
                            let values = w.values(&name, n);
                            // A series is always of one Deployment; chunks
                            // of several runs (a target set's) are cut and
                            // never reordered by Deployment.
                            let records = series_records(&name, &values);
                            let owners = if values.len() > 1 {
                                let first = series_records(&name, &values[..1]).len() as u32;
                                ChunkOwners::Runs(
                                    std::sync::Arc::from(vec![
                                        OwnerRun { owner: s, end: first, samples: 1 },
                                        OwnerRun { owner: s, end: records.len() as u32, samples: u32::from(n) - 1 },
                                    ]),
                                    0,
                                    2,
                                )
                            } else {
                                ChunkOwners::One(s)
                            };
                            let packed = (s % 2 == 0).then(|| Packed::new(Packed::slots(1), 0));
                            // Requests take their time before the target's
                            // lock in another order than they get it.
                            let skew = Duration::from_millis(values[0] * 37 % 300);
                            let enqueued = w.now.checked_sub(skew).unwrap_or(w.now);
                            let chunk = sim_chunk(records, n, enqueued, packed, owners);
                            // Odd series' chunks cut finer (a set whose
                            // widest target is wider): the same lane.
                            let cut = shards << (s % 2);
                            w.core.push_cut(s & (cut - 1), chunk, &mut w.disk);
                        }
                    }
                    Op::Advance { ms } => w.now += Duration::from_millis(u64::from(ms)),
                    Op::Complete { pick, outcome } => {
                        if !w.flying.is_empty() {
                            let at = usize::from(pick) % w.flying.len();
                            w.complete(at, outcome);
                        }
                    }
                    Op::Reload => w.reload(),
                    Op::Pause(p) => w.core.set_paused(p),
                    Op::Reconfigure { max_concurrency, max_samples } => {
                        let mut c = cfg.clone();
                        c.max_concurrency = u32::from(max_concurrency);
                        c.max_samples = u32::from(max_samples);
                        w.core.reconfigure("t", c);
                    }
                }
                w.poll();
            }
            // Then the target comes back for good: everything drains.
            w.core.set_paused(false);
            w.core.set_flush(true);
            for _ in 0..100_000 {
                w.reload();
                w.poll();
                if w.flying.is_empty() {
                    if w.core.is_idle() {
                        break;
                    }
                    w.now += Duration::from_millis(50);
                    continue;
                }
                w.complete(0, 0);
            }
            prop_assert!(w.core.is_idle(), "drained");
            prop_assert_eq!((w.core.queue_bytes(), w.core.queue_samples()), (0, 0));
            prop_assert_eq!(w.core.counters().dropped_queue_full, 0);
            let mut seen = BTreeSet::new();
            for (name, values) in &w.delivered {
                prop_assert!(values.windows(2).all(|p| p[0] < p[1]), "{} out of order or duplicated: {:?}", name, values);
                seen.extend(values.iter().map(|v| (name.clone(), *v)));
            }
            let missing: Vec<_> = w.pushed.difference(&seen).filter(|k| !w.rejected.contains(k)).collect();
            prop_assert!(missing.is_empty(), "lost: {:?}", missing);
            prop_assert_eq!(w.core.disk_ack(), w.disk.0.len() as u64, "every disk record acked");
        }
    }
}

#[test]
fn deliver_queue_batches_are_cut_to_max_bytes_per_send() {
    // 400 series queued, a batch may hold 1,000 samples but only 2 KiB
    // compressed: every batch sent fits, and every series goes once (one
    // sample each, so there is no per-series order to check here).
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.max_samples = 1000;
    cfg.max_bytes = Some(2048);
    let mut core = TargetCore::new("t", cfg, 1);
    let mut pushed = Vec::new();
    for k in 0..4 {
        let c = chunk(100, &format!("c{k}"), t0);
        pushed.extend(decode_records(&c.records));
        core.push(0, c, &mut DropOldest);
    }
    core.set_flush(true);
    let mut got = Vec::new();
    let mut batches = 0;
    while let Some(d) = core.poll(t0) {
        assert!(d.body.len() <= 2048, "a batch of {} bytes", d.body.len());
        got.extend(decode(&d.body));
        batches += 1;
        delivered(&mut core, &d, t0);
        assert!(batches < 400, "no progress");
    }
    got.sort();
    pushed.sort();
    assert_eq!(got, pushed);
    assert!(batches > 1);
    assert_eq!(core.counters().dropped_rejected, 0);
}

#[test]
fn deliver_queue_a_backlog_of_another_lane_key_is_delivered_before_new_data() {
    // Recovered records of lane 1 (an older release picked their lanes by
    // another key, so a series of theirs may now be in lane 0): new data of
    // lane 0 waits until every one of them was delivered, not only read back.
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.deadline = Duration::ZERO;
    let mut core = TargetCore::new("t", cfg, 1);
    let old = |seq: u64, name: &str| DiskChunk {
        seq,
        tag: 1,
        records: series_records(name, &[1]),
        wire: 0,
        samples: 1,
        enqueued_ms: 0,
    };
    core.set_recovered(0, 2);
    core.set_barrier(2);
    core.reload(vec![old(1, "x"), old(2, "y")], 2, true, t0, 0);
    core.push(0, chunk(1, "x", t0), &mut DropOldest);
    let first = core.poll(t0).expect("the recovered records");
    assert_eq!(decode(&first.body), ["x", "y"].map(String::from).to_vec());
    // It fails: while it waits for its retry, lane 0 is free, yet its new
    // data must not overtake the old records of the same series.
    let fail = SendResult::Connect("refused".into());
    core.on_result(
        first.lane,
        first.batch,
        &fail,
        Duration::ZERO,
        t0,
        SystemTime::now(),
    );
    assert!(core.poll(t0).is_none(), "new data waits for the backlog");
    let later = t0 + Duration::from_secs(10);
    let again = core.poll(later).expect("the retry");
    assert_eq!(again.batch, first.batch);
    delivered(&mut core, &again, later);
    let next = core.poll(later).expect("then the new data");
    assert_eq!(decode(&next.body), ["x_0"].map(String::from).to_vec());
}

/// A chunk a failing target keeps as its snappy part (in memory) is cut by
/// a batch smaller than it: it is decompressed and counted by its records
/// from then on, and the queue's byte count comes back to zero once all of
/// it is sent (it used to underflow).
#[test]
fn a_compacted_chunk_cut_by_a_batch_keeps_the_queue_counts_right() {
    let t0 = Instant::now();
    let mut core = TargetCore::new("t", config(), 1);
    let mut c = chunk(25, "w", t0);
    c.wire = c.records.len() as u32;
    c.records = fanout_proto::snappy::compress_part(&c.records);
    core.push(0, c, &mut DropOldest);
    let mut names = Vec::new();
    let mut at = t0;
    for _ in 0..10 {
        let Some(d) = core.poll(at) else {
            at += Duration::from_secs(1);
            continue;
        };
        assert!(d.samples <= 10, "batches of at most 10: {}", d.samples);
        names.extend(decode(&d.body));
        delivered(&mut core, &d, at);
    }
    let want: Vec<String> = (0..25).map(|i| format!("w_{i}")).collect();
    assert_eq!(names, want);
    assert_eq!((core.queue_bytes(), core.queue_samples()), (0, 0));
    assert!(core.is_idle());
}

/// The highest sent timestamp is the newest of the delivered chunks' (a
/// failed batch does not count until it is delivered), and records read
/// back from disk, which carry none, leave it where it was.
#[test]
fn the_highest_sent_timestamp_follows_deliveries_only() {
    let t0 = Instant::now();
    let mut core = TargetCore::new("t", config(), 1);
    assert_eq!(core.counters().highest_sent_ms, i64::MIN);
    let mut a = chunk(5, "a", t0);
    a.newest = 9_000;
    let mut b = chunk(5, "b", t0);
    b.newest = 7_000;
    core.push(0, a, &mut DropOldest);
    core.push(0, b, &mut DropOldest);
    let d = core.poll(t0).expect("a full batch");
    let fail = SendResult::Connect("refused".into());
    core.on_result(
        d.lane,
        d.batch,
        &fail,
        Duration::ZERO,
        t0,
        SystemTime::now(),
    );
    assert_eq!(core.counters().highest_sent_ms, i64::MIN, "not delivered");
    // The next batch polled at `at`, delivered: the core's highest then.
    let highest_after = |core: &mut TargetCore, at: Instant, what: &str| {
        let d = core.poll(at).unwrap_or_else(|| panic!("{what}"));
        match core.on_result(
            d.lane,
            d.batch,
            &ok(),
            Duration::ZERO,
            at,
            SystemTime::now(),
        ) {
            Event::Sent { .. } => core.counters().highest_sent_ms,
            ev => panic!("{what}: {ev:?}"),
        }
    };
    let at = t0 + Duration::from_secs(10);
    assert_eq!(highest_after(&mut core, at, "the retry"), 9_000);
    let (records, samples) = records(3, "d");
    let disk = vec![DiskChunk {
        seq: 1,
        tag: 0,
        records,
        wire: 0,
        samples,
        enqueued_ms: 0,
    }];
    core.reload(disk, 1, true, at, 0);
    core.set_flush(true);
    assert_eq!(highest_after(&mut core, at, "the disk batch"), 9_000);
}
