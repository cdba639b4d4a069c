//! Admission control of the public API: per-source rate limits on registrations and on
//! appointment writes (`governor`'s keyed GCRA limiters). A source is the peer's address, or the
//! `X-Real-IP` header with `--behindproxy`; IPv6 sources are counted per /64, the smallest block
//! a host is usually given, so that one host cannot rotate through its addresses. Keys not seen
//! for a while are forgotten (see [`Admission::forget_idle`]), so memory follows the sources
//! active within a window, not all sources ever seen.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::protocol::UserId;

/// How often [`Admission::forget_idle`] should run.
pub const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The rate limits, per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Registrations per minute (0: no limit).
    pub registrations_per_minute: u32,
    /// Appointment writes per second, with bursts of 4x (0: no limit).
    pub appointments_per_second: u32,
    /// get_subscription_info per minute, per source and per user (0: no limit).
    pub subscription_info_per_minute: u32,
}

/// What is being asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /register`.
    Register,
    /// `POST /add_appointment`.
    AddAppointment,
    /// `POST /get_subscription_info` (its answer lists every locator of the user; its signature
    /// is over a fixed message, so one can be replayed).
    SubscriptionInfo,
}

/// A request over its source's limit: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

/// The per-source limiters, and the per-user one of `get_subscription_info`.
#[derive(Debug)]
pub struct Admission {
    register: Option<DefaultKeyedRateLimiter<IpAddr>>,
    add_appointment: Option<DefaultKeyedRateLimiter<IpAddr>>,
    subscription_info: Option<DefaultKeyedRateLimiter<IpAddr>>,
    subscription_info_by_user: Option<DefaultKeyedRateLimiter<UserId>>,
}

impl Admission {
    /// Limiters for `limits`.
    pub fn new(limits: RateLimits) -> Self {
        let register =
            NonZeroU32::new(limits.registrations_per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        let add_appointment = NonZeroU32::new(limits.appointments_per_second).map(|n| {
            let burst = n.saturating_mul(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
            RateLimiter::keyed(Quota::per_second(n).allow_burst(burst))
        });
        let per_minute = NonZeroU32::new(limits.subscription_info_per_minute).map(Quota::per_minute);
        let subscription_info = per_minute.map(RateLimiter::keyed);
        let subscription_info_by_user = per_minute.map(RateLimiter::keyed);
        Admission { register, add_appointment, subscription_info, subscription_info_by_user }
    }

    /// Admits one `get_subscription_info` of `user` (once authenticated), or says when to retry.
    pub fn admit_user(&self, user: &UserId) -> Result<(), RetryAfter> {
        let Some(limiter) = &self.subscription_info_by_user else { return Ok(()) };
        limiter.check_key(user).map_err(retry_after)
    }

    /// Admits one `action` from `source`, or says when to try again.
    pub fn admit(&self, action: Action, source: IpAddr) -> Result<(), RetryAfter> {
        let limiter = match action {
            Action::Register => &self.register,
            Action::AddAppointment => &self.add_appointment,
            Action::SubscriptionInfo => &self.subscription_info,
        };
        let Some(limiter) = limiter else { return Ok(()) };
        limiter.check_key(&source_key(source)).map_err(retry_after)
    }

    /// Forgets the sources (and users) whose limits have fully recovered (call every
    /// [`FORGET_EVERY`]).
    pub fn forget_idle(&self) {
        for limiter in [&self.register, &self.add_appointment, &self.subscription_info].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.subscription_info_by_user {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Sources currently remembered, for tests and metrics.
    pub fn remembered(&self) -> usize {
        [&self.register, &self.add_appointment, &self.subscription_info].into_iter().flatten().map(|l| l.len()).sum()
    }
}

fn retry_after(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> RetryAfter {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    RetryAfter(wait.max(Duration::from_secs(1)))
}

/// The key a source is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_source_gets_its_own_allowance_and_one_over_it_is_told_when_to_retry() {
        let admission = Admission::new(RateLimits {
            registrations_per_minute: 2,
            appointments_per_second: 1,
            subscription_info_per_minute: 0,
        });
        assert!(admission.admit(Action::Register, ip("10.0.0.1")).is_ok());
        assert!(admission.admit(Action::Register, ip("10.0.0.1")).is_ok());
        let RetryAfter(wait) = admission.admit(Action::Register, ip("10.0.0.1")).unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(30), "{wait:?}");
        assert!(admission.admit(Action::Register, ip("10.0.0.2")).is_ok(), "another source");
        // Appointments: a burst of 4x the rate, then refused; registrations are counted apart.
        for _ in 0..4 {
            assert!(admission.admit(Action::AddAppointment, ip("10.0.0.1")).is_ok());
        }
        assert!(admission.admit(Action::AddAppointment, ip("10.0.0.1")).is_err());
    }

    #[test]
    fn an_ipv6_host_cannot_rotate_through_its_slash_64() {
        let admission = Admission::new(RateLimits {
            registrations_per_minute: 1,
            appointments_per_second: 0,
            subscription_info_per_minute: 0,
        });
        assert!(admission.admit(Action::Register, ip("2001:db8:1:2::1")).is_ok());
        assert!(admission.admit(Action::Register, ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(admission.admit(Action::Register, ip("2001:db8:1:3::1")).is_ok(), "another /64");
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert!(admission.admit(Action::AddAppointment, ip("2001:db8:1:2::1")).is_ok(), "0 is no limit");
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let admission = Admission::new(RateLimits {
            registrations_per_minute: 600,
            appointments_per_second: 0,
            subscription_info_per_minute: 0,
        });
        for n in 0..100u8 {
            let _ = admission.admit(Action::Register, IpAddr::from([10, 0, 1, n]));
        }
        assert_eq!(admission.remembered(), 100);
        // At 600 per minute one request's cost is recovered within 100 ms; nothing is waited
        // for here: forgetting happens only for keys whose state is fully recovered, so just
        // check that it never forgets a source still over its limit.
        let busy = IpAddr::from([10, 0, 2, 1]);
        while admission.admit(Action::Register, busy).is_ok() {}
        admission.forget_idle();
        assert!(admission.admit(Action::Register, busy).is_err(), "a limited source is kept");
    }
}
