//! The client's part of a striped pipe: dialling stripes, their handshakes,
//! re-dialling lost ones with backoff, and the error when the server was
//! never reached.

use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::Registry;
use rand::RngExt;
use striper_core::{ErrorKind, PipeError};

use super::{Paths, Role, StripedConfig, StripedPipe};
use crate::path::PathSpec;
use crate::proto::handshake::{
    ClientHello, ClientStep, Kind, MAX_STRIPES, SECRET_LEN, SessionId, Status, TargetName,
};
use crate::stripe::{Stripe, StripeState};

/// First re-dial delay; doubles per failed attempt up to the maximum.
const REDIAL_BASE: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(5);

impl StripedPipe {
    /// A client session for the server's `target`: starts connecting
    /// `per_path` stripes on each of `paths` (stripes `k * per_path ..` are
    /// path `k`'s).
    pub fn client(
        cfg: StripedConfig,
        paths: Vec<PathSpec>,
        target: TargetName,
        per_path: u8,
        id: SessionId,
    ) -> Result<StripedPipe, PipeError> {
        let count = paths.len() * per_path as usize;
        if count == 0 || count > MAX_STRIPES as usize {
            return Err(PipeError::new(
                ErrorKind::Protocol,
                format!(
                    "{} path(s) x {per_path} stripes = {count} stripes; a session has 1 to \
                     {MAX_STRIPES}",
                    paths.len()
                ),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        for p in &paths {
            if !names.contains(&p.server_name.as_str()) {
                names.push(&p.server_name);
            }
        }
        let server_name = names.join(", ");
        let mut secret = [0u8; SECRET_LEN];
        fill_from_os(&mut secret);
        let mut pipe = StripedPipe::new(
            Role::Client {
                server_name,
                target,
            },
            cfg,
            id,
            secret,
            count,
        );
        pipe.paths = Paths::new(paths, per_path as usize);
        for i in 0..count {
            let backup = pipe.paths.spec_of(i).backup;
            pipe.session.set_stripe_backup(i, backup);
        }
        let mut first_err = None;
        for i in 0..count {
            match pipe.connect_stripe(i, false) {
                Ok(s) => pipe.stripes[i] = Some(s),
                Err(e) => {
                    warn!(
                        "{}: {} could not start connecting: {e}",
                        pipe.label,
                        pipe.paths.name_stripe(i)
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        if pipe.stripes.iter().all(|s| s.is_none()) {
            return Err(first_err.expect("count >= 1"));
        }
        Ok(pipe)
    }

    /// A new connection for stripe `i` along its path; `join`: it replaces
    /// a lost one of an established session.
    fn connect_stripe(&self, i: usize, join: bool) -> Result<Stripe, PipeError> {
        let path = self.paths.spec_of(i);
        let Role::Client { target, .. } = &self.role else {
            unreachable!("only clients dial");
        };
        let hello = ClientHello {
            kind: if join && self.established {
                Kind::Join
            } else {
                Kind::Open
            },
            index: i as u8,
            count: self.stripes.len() as u8,
            session: self.id,
            window: self.cfg.session.window,
            max_payload: self.cfg.session.max_payload,
            backup: path.backup,
            target: *target,
        };
        Stripe::connect(&self.cfg, path, &hello, &self.secret)
    }

    /// Plans the next connection for stripe `i`, with exponential backoff
    /// and jitter so many clients do not come back in lockstep.
    pub(super) fn schedule_redial(&mut self, i: usize, now: Instant) -> Option<Duration> {
        if !matches!(self.role, Role::Client { .. })
            || !self.established
            || self.closing_since.is_some()
            || self.failed.is_some()
            || self.redial[i].at.is_some()
        {
            return None;
        }
        let r = &mut self.redial[i];
        let exp = REDIAL_BASE
            .saturating_mul(1 << r.attempts.min(8))
            .min(REDIAL_MAX);
        let delay = exp.mul_f64(rand::rng().random_range(0.5..1.5));
        r.attempts += 1;
        r.at = Some(now + delay);
        Some(delay)
    }

    /// Starts the re-dials that are due.
    pub(super) fn start_redials(&mut self, registry: &Registry, now: Instant) {
        for i in 0..self.stripes.len() {
            if self.stripes[i].is_some() || self.redial[i].at.is_none_or(|t| t > now) {
                continue;
            }
            self.redial[i].at = None;
            let span = self.span.expect("registered");
            let dialed = self.connect_stripe(i, true).and_then(|mut s| {
                s.register(registry, span.token(i))
                    .map_err(|e| PipeError::io("stripe", &e))?;
                Ok(s)
            });
            match dialed {
                Ok(s) => {
                    debug!("{}: re-dialing stripe {i}", self.label);
                    self.stripes[i] = Some(s);
                }
                Err(e) => {
                    debug!("{}: re-dial of stripe {i} failed: {e}", self.label);
                    self.last_stripe_error = Some(e);
                    self.schedule_redial(i, now);
                }
            }
        }
    }

    /// Connect completion and the client side of the handshake.
    pub(super) fn advance_handshake(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
    ) -> Result<(), PipeError> {
        let Some(state) = self.stripes[i].as_ref().map(Stripe::state) else {
            return Ok(());
        };
        match state {
            StripeState::Connecting => {
                let s = self.stripes[i].as_mut().expect("present");
                s.poll_connect(&self.cfg, registry, now)?;
                if s.state() == StripeState::AwaitAnswer {
                    debug!("{}: stripe {i} connected", self.label);
                }
            }
            StripeState::AwaitAnswer => {
                // The server of this stripe's path, not every server.
                let peer = format!("server {}", self.paths.spec_of(i).server_name);
                let timeout = self.cfg.session.stripe_timeout;
                let s = self.stripes[i].as_mut().expect("present");
                let Some(step) = s.read_answer(&peer, now, timeout)? else {
                    return Ok(());
                };
                let join = s.is_join();
                match step {
                    ClientStep::Pending => unreachable!("read_answer waits"),
                    ClientStep::Accepted {
                        keys,
                        send,
                        window,
                        max_payload,
                    } => {
                        s.confirm(*keys, &send);
                        s.set_state(StripeState::Up, now);
                        self.session.stripe_up(i, now);
                        self.stripe_accepted(i, join, window, max_payload, now);
                        self.note_path_up(i, now);
                    }
                    ClientStep::Refused(Status::UnknownSession) if join => {
                        // The server has forgotten the session (it timed
                        // out or restarted): nothing to resume.
                        return Err(self.fail(PipeError::new(
                            ErrorKind::Reset,
                            format!("{peer} no longer has this session"),
                        )));
                    }
                    ClientStep::Refused(Status::UnknownTarget) => {
                        // No other stripe can fare better: the name is
                        // the session's.
                        let what = match &self.role {
                            Role::Client { target, .. } if !target.is_default() => {
                                format!("target {target}")
                            }
                            _ => "default target".to_string(),
                        };
                        return Err(self.fail(PipeError::new(
                            ErrorKind::Connect,
                            format!("{peer} refused the session: unknown target: it has no {what}"),
                        )));
                    }
                    ClientStep::Refused(status) => {
                        return Err(PipeError::new(
                            ErrorKind::Protocol,
                            format!("{peer} refused the stripe: {status}"),
                        ));
                    }
                    ClientStep::Malformed(e) => {
                        return Err(PipeError::new(
                            ErrorKind::Protocol,
                            format!("{peer} answered with a bad handshake: {e}"),
                        ));
                    }
                    ClientStep::BadProof(e) => {
                        return Err(PipeError::new(
                            ErrorKind::Protocol,
                            format!(
                                "{peer} did not prove it holds our key ({e}): wrong key on one \
                                 side, or the server runs without one"
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The server took stripe `i`: the session is established.
    fn stripe_accepted(&mut self, i: usize, join: bool, window: u32, max: u32, now: Instant) {
        self.redial[i].attempts = 0;
        if !self.peer_known {
            self.session.set_peer_params(window, max);
            self.peer_known = true;
        }
        if join {
            self.note_rejoined(i);
        }
        if !self.established {
            self.established = true;
            // Stripes that failed before the server knew the session can
            // now be re-dialed as members of it.
            for j in 0..self.stripes.len() {
                if self.stripes[j].is_none() {
                    self.schedule_redial(j, now);
                }
            }
        }
    }

    /// The session's error when no stripe ever reached the server.
    pub(super) fn unreachable_error(&self) -> PipeError {
        match (&self.role, &self.last_stripe_error) {
            (Role::Client { server_name, .. }, Some(last)) if last.kind == ErrorKind::Connect => {
                PipeError::new(
                    ErrorKind::Connect,
                    format!("server {server_name} unreachable: {}", last.detail()),
                )
            }
            _ => self.all_lost_error(),
        }
    }
}

/// A fresh session id from the operating system's RNG.
pub fn new_session_id() -> SessionId {
    let mut id = [0u8; 16];
    fill_from_os(&mut id);
    id
}

fn fill_from_os(buf: &mut [u8]) {
    use rand::TryRng;
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .expect("the OS random number generator failed");
}
