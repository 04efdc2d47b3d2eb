//! The benchmark report: one table row per figure, with its goal and whether it holds.

use std::fmt::Write as _;

/// Whether a figure meets its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    Missed,
    /// A figure without a goal (context).
    Info,
    /// Timing goals are not judged in `--quick` runs (debug builds, tiny samples).
    NotJudged,
}

impl Verdict {
    pub fn of(holds: bool, judged: bool) -> Self {
        match (judged, holds) {
            (false, _) => Self::NotJudged,
            (true, true) => Self::Holds,
            (true, false) => Self::Missed,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Holds => "holds",
            Self::Missed => "**missed**",
            Self::Info => "",
            Self::NotJudged => "not judged (quick)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub authgate: String,
    pub baseline: String,
    pub ratio: String,
    pub goal: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn new(metric: impl Into<String>) -> Self {
        Self {
            metric: metric.into(),
            authgate: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            goal: String::new(),
            verdict: Verdict::Info,
        }
    }
    pub fn authgate(mut self, v: impl Into<String>) -> Self {
        self.authgate = v.into();
        self
    }
    pub fn baseline(mut self, v: impl Into<String>) -> Self {
        self.baseline = v.into();
        self
    }
    pub fn ratio(mut self, v: impl Into<String>) -> Self {
        self.ratio = v.into();
        self
    }
    pub fn goal(mut self, v: impl Into<String>, verdict: Verdict) -> Self {
        self.goal = v.into();
        self.verdict = verdict;
        self
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Broken counts or failed calls: the run proves nothing when there are any.
    failures: Vec<String>,
}

impl Report {
    pub fn row(&mut self, r: Row) {
        eprintln!(
            "  {}: {} {} {} {}",
            r.metric,
            r.authgate,
            if r.baseline.is_empty() {
                String::new()
            } else {
                format!("(baseline {})", r.baseline)
            },
            r.ratio,
            r.verdict.text()
        );
        self.rows.push(r);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// Records a broken invariant; the run will exit non-zero.
    pub fn fail(&mut self, what: impl Into<String>) {
        let w = what.into();
        eprintln!("  FAILED: {w}");
        self.failures.push(w);
    }

    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.fail(what);
        }
    }

    pub fn valid(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn missed(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Missed)
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        for h in &self.header {
            let _ = writeln!(s, "{h}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| figure | authgate | baseline | ratio | goal | result |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.metric,
                r.authgate,
                r.baseline,
                r.ratio,
                r.goal,
                r.verdict.text()
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s);
        if self.failures.is_empty() {
            let missed = self.missed().len();
            let _ = writeln!(
                s,
                "Run valid: every call succeeded and every count matched. Goals missed: {missed}."
            );
        } else {
            let _ = writeln!(s, "RUN INVALID:");
            for f in &self.failures {
                let _ = writeln!(s, "- {f}");
            }
        }
        s
    }
}

/// `x` with sensible precision.
pub fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Microseconds as µs or ms.
pub fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
