//! The order in which a training step uses its layers: declared, or recorded
//! during a step and replayed, and checked against every gather.

/// What one gather tells the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The gather is the trusted order's next layer (at this position).
    Matches(usize),
    /// It is not: the order is no longer trusted and this step is recorded.
    Departed {
        /// Position in the step.
        position: usize,
        /// What the order said, if it went that far.
        expected: Option<String>,
    },
    /// No order is trusted; the step is being recorded.
    Recording,
}

/// What the end of a step did to the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEnd {
    /// The step followed the trusted order to its end.
    Replayed,
    /// The step's order (recorded, or observed after a departure) is now the
    /// trusted order.
    Adopted,
    /// The step ended before the trusted order did: it is no longer trusted,
    /// and this step's order is adopted instead.
    EndedEarly {
        /// Gathers the step made.
        observed: usize,
        /// Layers in the order.
        expected: usize,
    },
}

/// The trusted order, if any, and the current step's observations.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    order: Option<Vec<String>>,
    observed: Vec<String>,
    /// Whether every gather of this step so far matched the trusted order.
    matching: bool,
    invalidations: u64,
}

impl Trace {
    /// An empty trace: the first step is recorded.
    pub fn new() -> Trace {
        Trace::default()
    }

    /// Trusts `order` from the next step on (or from this one, if it has
    /// made no gather yet).
    pub fn declare(&mut self, order: Vec<String>) {
        self.matching = self.observed.iter().zip(&order).all(|(a, b)| a == b) && self.observed.len() <= order.len();
        self.order = Some(order);
    }

    /// The trusted order, while it is trusted.
    pub fn order(&self) -> Option<&[String]> {
        if self.matching { self.order.as_deref() } else { None }
    }

    /// Gathers made this step.
    pub fn position(&self) -> usize {
        self.observed.len()
    }

    /// Times a trusted order was found wrong.
    pub fn invalidations(&self) -> u64 {
        self.invalidations
    }

    /// Records a gather of `layer`.
    pub fn observe(&mut self, layer: &str) -> Observed {
        let position = self.observed.len();
        self.observed.push(layer.to_string());
        if !self.matching {
            return Observed::Recording;
        }
        let Some(order) = &self.order else {
            self.matching = false;
            return Observed::Recording;
        };
        match order.get(position) {
            Some(expected) if expected == layer => Observed::Matches(position),
            expected => {
                let expected = expected.cloned();
                self.matching = false;
                self.invalidations += 1;
                Observed::Departed { position, expected }
            }
        }
    }

    /// Ends the step: checks that it went through the whole trusted order,
    /// or adopts the step's order as the new one.
    pub fn end_step(&mut self) -> StepEnd {
        let observed = std::mem::take(&mut self.observed);
        let result = match (&self.order, self.matching) {
            (Some(order), true) if order.len() == observed.len() => StepEnd::Replayed,
            (Some(order), true) => {
                self.invalidations += 1;
                StepEnd::EndedEarly {
                    observed: observed.len(),
                    expected: order.len(),
                }
            }
            _ => StepEnd::Adopted,
        };
        if result != StepEnd::Replayed {
            // A step without gathers teaches nothing.
            self.order = (!observed.is_empty()).then_some(observed);
        }
        self.matching = self.order.is_some();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn step(trace: &mut Trace, layers: &[&str]) -> (Vec<Observed>, StepEnd) {
        let seen = layers.iter().map(|l| trace.observe(l)).collect();
        (seen, trace.end_step())
    }

    #[test]
    fn the_first_step_is_recorded_then_replayed() {
        let mut trace = Trace::new();
        assert_eq!(trace.order(), None);
        let (seen, end) = step(&mut trace, &["a", "b", "b", "a"]);
        assert!(seen.iter().all(|o| *o == Observed::Recording));
        assert_eq!(end, StepEnd::Adopted);
        assert_eq!(trace.order().unwrap(), names(&["a", "b", "b", "a"]));
        let (seen, end) = step(&mut trace, &["a", "b", "b", "a"]);
        assert_eq!(seen, (0..4).map(Observed::Matches).collect::<Vec<_>>());
        assert_eq!(end, StepEnd::Replayed);
        assert_eq!(trace.invalidations(), 0);
    }

    #[test]
    fn a_departure_invalidates_and_the_step_is_recorded_again() {
        let mut trace = Trace::new();
        trace.declare(names(&["a", "b", "c"]));
        assert_eq!(trace.observe("a"), Observed::Matches(0));
        assert_eq!(
            trace.observe("c"),
            Observed::Departed {
                position: 1,
                expected: Some("b".into())
            }
        );
        assert_eq!(trace.order(), None, "not trusted after a departure");
        assert_eq!(trace.observe("b"), Observed::Recording);
        assert_eq!(trace.end_step(), StepEnd::Adopted);
        assert_eq!(trace.order().unwrap(), names(&["a", "c", "b"]));
        assert_eq!(trace.invalidations(), 1);
    }

    #[test]
    fn a_longer_or_shorter_step_invalidates() {
        let mut trace = Trace::new();
        trace.declare(names(&["a", "b"]));
        let (seen, _) = step(&mut trace, &["a", "b", "c"]);
        assert_eq!(
            seen[2],
            Observed::Departed {
                position: 2,
                expected: None
            }
        );
        assert_eq!(trace.order().unwrap(), names(&["a", "b", "c"]));
        let (_, end) = step(&mut trace, &["a", "b"]);
        assert_eq!(
            end,
            StepEnd::EndedEarly {
                observed: 2,
                expected: 3
            }
        );
        assert_eq!(trace.order().unwrap(), names(&["a", "b"]));
        assert_eq!(trace.invalidations(), 2);
        let (_, end) = step(&mut trace, &[]);
        assert_eq!(
            end,
            StepEnd::EndedEarly {
                observed: 0,
                expected: 2
            }
        );
        assert_eq!(trace.order(), None, "an empty step leaves nothing to trust");
    }
}
