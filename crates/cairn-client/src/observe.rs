//! Observations a server holds on the client's resources and when to notify them (OMA
//! LwM2M Core 1.2 §5.1.2 notification attributes and §6.4.1 Observe): a notification goes
//! out when the value changed by the attributes' rules (any change, or gt / lt crossed,
//! or a step of st) and pmin has passed since the last one, or when pmax has passed.
//!
//! Values are re-read every evaluation period (at least pmin, at least epmin), so
//! resources that change by themselves (the Device object's clock) are noticed without
//! the handler signalling anything; [`crate::ClientCore::changed`] makes a change known at
//! once.

use std::time::Duration;

use cairn_coap::ContentFormat;
use cairn_lwm2m::{
    AttributeName, AttributeSet, AttributeValue, LwM2mNode, LwM2mPath, ResourceValue, Value,
};

/// The attributes that govern one observation, after inheritance (object → instance →
/// resource) and the server's default pmin and pmax.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NotificationAttributes {
    /// Minimum period between notifications.
    pub pmin: Duration,
    /// Maximum period without a notification (`None`: no limit).
    pub pmax: Option<Duration>,
    /// Notify when the value crosses above or below this.
    pub gt: Option<f64>,
    /// Notify when the value crosses below or above this.
    pub lt: Option<f64>,
    /// Notify when the value moved at least this much since the last notification.
    pub st: Option<f64>,
    /// Minimum evaluation period.
    pub epmin: Option<Duration>,
}

impl NotificationAttributes {
    /// The effective attributes from the sets written at each level, most general first.
    pub fn resolve<'a>(
        levels: impl IntoIterator<Item = &'a AttributeSet>,
        default_pmin: Option<u64>,
        default_pmax: Option<u64>,
    ) -> NotificationAttributes {
        let mut merged = AttributeSet::new();
        for level in levels {
            merged.apply(level);
        }
        let seconds = |name| match merged.get(name) {
            Some(AttributeValue::Unsigned(v)) => Some(*v),
            _ => None,
        };
        let float = |name| match merged.get(name) {
            Some(AttributeValue::Float(v)) => Some(*v),
            _ => None,
        };
        NotificationAttributes {
            pmin: Duration::from_secs(seconds(AttributeName::Pmin).or(default_pmin).unwrap_or(0)),
            pmax: seconds(AttributeName::Pmax)
                .or(default_pmax)
                .filter(|p| *p > 0)
                .map(Duration::from_secs),
            gt: float(AttributeName::Gt),
            lt: float(AttributeName::Lt),
            st: float(AttributeName::St),
            epmin: seconds(AttributeName::Epmin).map(Duration::from_secs),
        }
    }

    /// Does going from `old` to `new` call for a notification?
    pub fn changed(&self, old: &LwM2mNode, new: &LwM2mNode) -> bool {
        if self.gt.is_none() && self.lt.is_none() && self.st.is_none() {
            return old != new;
        }
        let (Some(old), Some(new)) = (numeric(old), numeric(new)) else {
            return old != new;
        };
        let crossed = |threshold: Option<f64>| threshold.is_some_and(|t| (old > t) != (new > t));
        let stepped = self.st.is_some_and(|st| (new - old).abs() >= st);
        crossed(self.gt) || crossed(self.lt) || stepped
    }
}

fn numeric(node: &LwM2mNode) -> Option<f64> {
    let value = match node {
        LwM2mNode::Resource(resource) => match &resource.value {
            ResourceValue::Single(value) => value,
            ResourceValue::Multiple(_) => return None,
        },
        LwM2mNode::ResourceInstance(instance) => &instance.value,
        _ => return None,
    };
    #[allow(clippy::cast_precision_loss)]
    match value {
        Value::Integer(v) | Value::Time(v) => Some(*v as f64),
        Value::UnsignedInteger(v) => Some(*v as f64),
        Value::Float(v) => Some(*v),
        _ => None,
    }
}

/// One observation held by a server.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The observed path.
    pub path: LwM2mPath,
    /// The format of its notifications (that of the first response).
    pub format: ContentFormat,
    /// The value last sent.
    pub last_value: LwM2mNode,
    /// When it was sent.
    pub last_sent: Duration,
    /// When to evaluate next.
    pub next_check: Duration,
}

impl Observation {
    /// A new observation whose first response carried `value` at `now`.
    pub fn new(path: LwM2mPath, format: ContentFormat, value: LwM2mNode, now: Duration) -> Self {
        Observation {
            path,
            format,
            last_value: value,
            last_sent: now,
            next_check: now,
        }
    }

    /// The earliest time a notification may go out.
    pub fn earliest(&self, attributes: &NotificationAttributes) -> Duration {
        self.last_sent + attributes.pmin
    }

    /// Decides at `now` whether `current` is to be notified; updates the schedule.
    pub fn evaluate(
        &mut self,
        now: Duration,
        current: &LwM2mNode,
        attributes: &NotificationAttributes,
        evaluation_period: Duration,
    ) -> bool {
        let period = evaluation_period
            .max(attributes.pmin)
            .max(attributes.epmin.unwrap_or_default());
        if now < self.earliest(attributes) {
            self.next_check = self.earliest(attributes);
            return false;
        }
        let overdue = attributes
            .pmax
            .is_some_and(|pmax| now >= self.last_sent + pmax);
        let notify = overdue || attributes.changed(&self.last_value, current);
        if notify {
            self.last_value = current.clone();
            self.last_sent = now;
        }
        let mut next = now + period;
        if let Some(pmax) = attributes.pmax {
            next = next.min(self.last_sent + pmax);
        }
        self.next_check = next;
        notify
    }
}

/// One Observe-Composite held by a server (Core 1.1 §6.4.3): its paths, each evaluated with
/// its own attributes; a notification carries the values of every path when any of them is
/// due.
#[derive(Clone, Debug, PartialEq)]
pub struct CompositeObservation {
    /// One entry per observed path, in request order.
    pub members: Vec<Observation>,
    /// The format of its notifications.
    pub format: ContentFormat,
    /// The FETCH body that registered it: with the path, what identifies it to CoAP.
    pub body: Vec<u8>,
    /// When to evaluate next.
    pub next_check: Duration,
}

impl CompositeObservation {
    /// Whether a change at `path` may change what this observation reports.
    pub fn concerns(&self, path: &LwM2mPath) -> bool {
        self.members
            .iter()
            .any(|m| m.path.starts_with(path) || path.starts_with(&m.path))
    }

    /// Schedules the first evaluation after the first response, sent at `now`.
    pub fn schedule_first(
        &mut self,
        now: Duration,
        attributes: &[NotificationAttributes],
        evaluation_period: Duration,
    ) {
        self.next_check = self
            .members
            .iter()
            .zip(attributes)
            .map(|(_, a)| now + a.pmin.max(evaluation_period))
            .min()
            .unwrap_or(now + evaluation_period);
    }

    /// Decides at `now` whether to notify: when any path is due under its own attributes.
    /// `current` holds each path's value (`None`: gone). Updates the schedule.
    pub fn evaluate(
        &mut self,
        now: Duration,
        current: &[Option<LwM2mNode>],
        attributes: &[NotificationAttributes],
        evaluation_period: Duration,
    ) -> bool {
        let mut probes = self.members.clone();
        let mut due = false;
        for ((probe, value), attributes) in probes.iter_mut().zip(current).zip(attributes) {
            if let Some(value) = value {
                due |= probe.evaluate(now, value, attributes, evaluation_period);
            } else {
                probe.next_check = now + evaluation_period;
            }
        }
        if due {
            // Every value goes out: every path starts its periods again.
            for ((member, value), attributes) in
                self.members.iter_mut().zip(current).zip(attributes)
            {
                if let Some(value) = value {
                    member.last_value = value.clone();
                }
                member.last_sent = now;
                let period = evaluation_period
                    .max(attributes.pmin)
                    .max(attributes.epmin.unwrap_or_default());
                let mut next = now + period;
                if let Some(pmax) = attributes.pmax {
                    next = next.min(now + pmax);
                }
                member.next_check = next;
            }
        } else {
            self.members = probes;
        }
        self.next_check = self
            .members
            .iter()
            .map(|m| m.next_check)
            .min()
            .unwrap_or(now + evaluation_period);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_lwm2m::LwM2mResource;

    fn integer(v: i64) -> LwM2mNode {
        LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(v)))
    }

    fn seconds(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn attributes_inherit_and_fall_back_to_server_defaults() {
        let object = AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(5));
        let resource = AttributeSet::new().with(AttributeName::Pmin, AttributeValue::Unsigned(2));
        let resolved = NotificationAttributes::resolve([&object, &resource], Some(1), Some(60));
        assert_eq!(resolved.pmin, seconds(2));
        assert_eq!(resolved.pmax, Some(seconds(60)));
    }

    #[test]
    fn thresholds_and_steps() {
        let attributes = NotificationAttributes {
            gt: Some(50.0),
            st: Some(10.0),
            ..NotificationAttributes::default()
        };
        assert!(!attributes.changed(&integer(40), &integer(45)));
        assert!(attributes.changed(&integer(45), &integer(51)));
        assert!(attributes.changed(&integer(20), &integer(30)));
        let any = NotificationAttributes::default();
        assert!(any.changed(&integer(1), &integer(2)) && !any.changed(&integer(1), &integer(1)));
    }

    #[test]
    fn pmin_holds_back_and_pmax_forces() {
        let attributes = NotificationAttributes {
            pmin: seconds(10),
            pmax: Some(seconds(30)),
            ..NotificationAttributes::default()
        };
        let path = LwM2mPath::Resource(3, 0, 9);
        let mut observation =
            Observation::new(path, ContentFormat::TEXT_PLAIN, integer(1), seconds(0));
        assert!(!observation.evaluate(seconds(5), &integer(2), &attributes, seconds(1)));
        assert_eq!(observation.next_check, seconds(10));
        assert!(observation.evaluate(seconds(10), &integer(2), &attributes, seconds(1)));
        assert!(!observation.evaluate(seconds(20), &integer(2), &attributes, seconds(1)));
        assert!(observation.evaluate(seconds(40), &integer(2), &attributes, seconds(1)));
    }
}
