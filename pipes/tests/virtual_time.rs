//! Two sessions talking over simulated stripes, in virtual time.
//!
//! Each simulated stripe is a pair of one-way links with their own rate and
//! delay, and a sender-side kernel queue that reports writable below a low
//! watermark, like a TCP socket with TCP_NOTSENT_LOWAT. Both sessions send a
//! random stream at the same time, then half-close; the test checks that
//! every byte arrives in order, both FINs are seen, and (for the kill switch)
//! that losing a stripe mid-stream loses nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pipes::proto::frame::{self, HEADER_LEN};
use pipes::proto::handshake::MIN_WINDOW;
use pipes::proto::session::{Session, SessionConfig, Transmit};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const STEP: Duration = Duration::from_micros(500);
const LOWAT: usize = 32 * 1024;

/// One direction of a stripe.
struct Link {
    rate: f64, // bytes per second
    delay: Duration,
    credit: f64,
    unsent: VecDeque<u8>,
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    arrived: Vec<u8>,
    delivered: u64,
    alive: bool,
}

impl Link {
    fn new(rate_mbit: f64, delay_ms: u64) -> Link {
        Link {
            rate: rate_mbit * 1e6 / 8.0,
            delay: Duration::from_millis(delay_ms),
            credit: 0.0,
            unsent: VecDeque::new(),
            in_flight: VecDeque::new(),
            arrived: Vec::new(),
            delivered: 0,
            alive: true,
        }
    }

    fn writable(&self) -> bool {
        self.alive && self.unsent.len() < LOWAT
    }

    fn queued(&self) -> u64 {
        (self.unsent.len() + self.in_flight.iter().map(|(_, b)| b.len()).sum::<usize>()) as u64
    }

    fn step(&mut self, now: Instant) {
        if !self.alive {
            return;
        }
        self.credit = (self.credit + self.rate * STEP.as_secs_f64()).min(self.rate * 0.01 + 1500.0);
        let n = (self.credit as usize).min(self.unsent.len());
        if n > 0 {
            self.credit -= n as f64;
            let chunk: Vec<u8> = self.unsent.drain(..n).collect();
            self.in_flight.push_back((now + self.delay, chunk));
        }
        while self.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            let (_, b) = self.in_flight.pop_front().expect("front");
            self.delivered += b.len() as u64;
            self.arrived.extend(b);
        }
    }
}

struct End {
    session: Session,
    /// Outgoing link of each stripe.
    tx: Vec<Link>,
    to_send: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    shut: bool,
    read_per_step: usize,
}

impl End {
    fn new(links: &[(f64, u64)], data: Vec<u8>, cfg: SessionConfig, read_per_step: usize) -> End {
        let mut session = Session::new(cfg, links.len());
        session.set_peer_params(MIN_WINDOW * 8, 64 * 1024);
        for i in 0..links.len() {
            session.stripe_up(i, Instant::now());
        }
        End {
            session,
            tx: links.iter().map(|&(r, d)| Link::new(r, d)).collect(),
            to_send: data,
            sent: 0,
            got: Vec::new(),
            shut: false,
            read_per_step,
        }
    }

    /// The application writes as much as the session takes, and the session
    /// fills the writable stripes.
    fn pump(&mut self, now: Instant) {
        let n = self.session.write(&self.to_send[self.sent..]);
        self.sent += n;
        if self.sent == self.to_send.len() && !self.shut {
            self.session.shutdown_write();
            self.shut = true;
        }
        for (i, l) in self.tx.iter().enumerate() {
            if l.alive {
                self.session.update_stripe(
                    i,
                    now,
                    (l.queued(), l.unsent.len() as u64),
                    l.delivered,
                    Some(l.delay * 2),
                );
                self.session.set_stripe_writable(i, l.writable());
            }
        }
        while let Some(t) = self.session.poll_transmit() {
            let bytes = self.bytes_of(&t);
            self.session.frame_written(t.stripe);
            let link = &mut self.tx[t.stripe];
            link.unsent.extend(bytes);
            if !link.writable() {
                self.session.set_stripe_writable(t.stripe, false);
            }
        }
    }

    fn bytes_of(&self, t: &Transmit) -> Vec<u8> {
        let mut payload = t.inline.clone();
        if let Some((off, len)) = t.data {
            let (a, b) = self.session.send_slices(off, len);
            payload.extend_from_slice(a);
            payload.extend_from_slice(b);
        }
        let mut v = t.header.encode(&[&payload]).to_vec();
        v.extend_from_slice(&payload);
        v
    }

    /// Frames that arrived on `peer`'s links are handed to this session.
    fn receive(&mut self, peer: &mut End, now: Instant) {
        for (i, link) in peer.tx.iter_mut().enumerate() {
            let mut at = 0;
            while let Some((f, n)) =
                frame::decode(&link.arrived[at..], 1 << 20).expect("valid frames")
            {
                self.session
                    .handle_frame(i, f, now)
                    .expect("frame accepted");
                at += n;
            }
            link.arrived.drain(..at);
        }
        let mut budget = self.read_per_step;
        while budget > 0 {
            let r = self.session.readable();
            let n = r.len().min(budget);
            if n == 0 {
                break;
            }
            self.got.extend_from_slice(&r[..n]);
            self.session.consume(n);
            budget -= n;
        }
    }
}

struct Outcome {
    elapsed: Duration,
}

/// Runs both directions to completion (or panics after `limit`).
fn run(
    links: &[(f64, u64)],
    bytes: usize,
    seed: u64,
    kill: Option<(usize, Duration)>,
    limit: Duration,
) -> Outcome {
    println!("virtual-time seed {seed} (rerun with STRIPER_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let a_data: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
    let b_data: Vec<u8> = (0..bytes / 2).map(|_| rng.random()).collect();
    let cfg = SessionConfig {
        window: 2 << 20,
        ..SessionConfig::default()
    };
    let mut a = End::new(links, a_data.clone(), cfg.clone(), usize::MAX);
    // The reverse direction's application reads slowly: 64 KiB per step.
    let mut b = End::new(links, b_data.clone(), cfg, 64 * 1024);
    let start = Instant::now();
    let mut now = start;
    while !(a.session.is_finished() && b.session.is_finished()) {
        assert!(
            now - start < limit,
            "seed {seed}: not finished after {limit:?} (a got {}, b got {})",
            a.got.len(),
            b.got.len()
        );
        if let Some((stripe, at)) = kill
            && now - start >= at
            && a.tx[stripe].alive
        {
            // Everything in flight on that stripe, both ways, is lost.
            a.tx[stripe].alive = false;
            b.tx[stripe].alive = false;
            a.session.stripe_down(stripe);
            b.session.stripe_down(stripe);
        }
        a.pump(now);
        b.pump(now);
        for l in a.tx.iter_mut().chain(b.tx.iter_mut()) {
            l.step(now);
        }
        a.receive(&mut b, now);
        b.receive(&mut a, now);
        now += STEP;
    }
    assert!(a.got == b_data, "seed {seed}: a→b stream differs");
    assert!(b.got == a_data, "seed {seed}: b→a stream differs");
    assert!(
        a.session.read_eof() && b.session.read_eof(),
        "both FINs seen"
    );
    Outcome {
        elapsed: now - start,
    }
}

fn seed() -> u64 {
    std::env::var("STRIPER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[test]
fn mixed_rates_and_delays_deliver_every_byte_in_order() {
    // Four stripes: 20, 20, 10 and 2 Mbit/s, 5 to 40 ms one way.
    let links = [(20.0, 5), (20.0, 20), (10.0, 40), (2.0, 10)];
    let o = run(&links, 4 << 20, seed(), None, Duration::from_secs(60));
    // 4 MiB at the 52 Mbit/s sum takes 0.65 s, plus round trips for the
    // window to open and the FINs; far slower means the slow or distant
    // stripes held the others back.
    let ideal = (4 << 20) as f64 * 8.0 / 52e6;
    println!(
        "finished in {:?} of virtual time, ideal {ideal:.2}s",
        o.elapsed
    );
    assert!(
        o.elapsed.as_secs_f64() < ideal / 0.6,
        "took {:?}",
        o.elapsed
    );
}

#[test]
fn a_stripe_ten_times_slower_does_not_drag_the_session() {
    let links = [(20.0, 10), (20.0, 10), (20.0, 10), (2.0, 10)];
    let o = run(&links, 8 << 20, seed(), None, Duration::from_secs(60));
    // Sum of caps 62 Mbit/s: 8 MiB takes 1.08 s at best. Dragged to the slow
    // stripe's pace (4 x 2 Mbit/s) it would take 8.4 s.
    let ideal = (8 << 20) as f64 * 8.0 / 62e6;
    println!("finished in {:?}, ideal {ideal:.2}s", o.elapsed);
    assert!(
        o.elapsed.as_secs_f64() < ideal / 0.85,
        "took {:?}",
        o.elapsed
    );
}

#[test]
fn one_stripe() {
    run(&[(50.0, 1)], 1 << 20, seed(), None, Duration::from_secs(30));
}

#[test]
fn losing_a_stripe_mid_stream_loses_nothing() {
    let links = [(20.0, 10), (20.0, 10), (20.0, 10)];
    run(
        &links,
        4 << 20,
        seed(),
        Some((1, Duration::from_millis(300))),
        Duration::from_secs(60),
    );
}

#[test]
fn header_length_is_what_the_protocol_doc_says() {
    assert_eq!(HEADER_LEN, 20);
}
