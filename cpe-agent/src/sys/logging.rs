//! The agent's log output: one line per event on stderr, in the layout of
//! `tracing-subscriber`'s default `fmt` output without colours.
//!
//! `tracing-subscriber` brings a span registry, layers, filters and generic
//! formatters that cost the agent's binary far more flash than the little it
//! uses of them. This subscriber keeps exactly what the agent printed with it:
//!
//! ```text
//! 2024-05-01T12:00:00.123456Z  INFO apply{now_ms=1}: isdf_agent::backend::iptables::apply: applied version=3
//! ```
//!
//! a UTC timestamp with microseconds, the level padded to five characters,
//! the entered spans from the root with their fields, the target, the message
//! (with terminal control characters escaped) and the other fields as
//! `key=value` (`?`/`%` values as `Debug`/`Display`, strings quoted).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::span::Current;

/// Makes stderr the destination of every log event at `level` or more
/// severe. Panics when called twice.
pub fn init(level: Level) {
    let sink = |line: &str| {
        // Like `tracing-subscriber`: a log line that cannot be written is
        // dropped, not an error of the agent.
        let _ = std::io::stderr().write_all(line.as_bytes());
    };
    tracing::subscriber::set_global_default(LineSubscriber::new(level, Box::new(sink)))
        .expect("Unable to install global subscriber");
}

/// Where finished lines go (stderr; a buffer in tests).
type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// A subscriber that formats each enabled event as one line.
pub struct LineSubscriber {
    max_level: Level,
    spans: Mutex<Spans>,
    sink: Sink,
}

/// The live spans, few at a time: a list is enough.
#[derive(Default)]
struct Spans {
    next_id: u64,
    live: Vec<SpanData>,
}

struct SpanData {
    id: u64,
    metadata: &'static Metadata<'static>,
    /// Formatted `key=value` fields, as they are printed between braces.
    fields: String,
    /// Kept alive while a child lives, so that its scope can be printed.
    parent: Option<u64>,
    /// Handles to this span (`clone_span` adds one, `try_close` drops one).
    refs: usize,
}

thread_local! {
    /// The spans this thread is in, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn innermost_entered() -> Option<u64> {
    ENTERED.with(|entered| entered.borrow().last().copied())
}

impl Spans {
    fn get(&self, id: u64) -> Option<&SpanData> {
        self.live.iter().find(|s| s.id == id)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut SpanData> {
        self.live.iter_mut().find(|s| s.id == id)
    }

    /// Drops one handle to `id`; returns whether that closed the span.
    fn release(&mut self, id: u64) -> bool {
        let Some(at) = self.live.iter().position(|s| s.id == id) else {
            return false;
        };
        self.live[at].refs -= 1;
        if self.live[at].refs > 0 {
            return false;
        }
        let closed = self.live.swap_remove(at);
        if let Some(parent) = closed.parent {
            self.release(parent);
        }
        true
    }
}

impl LineSubscriber {
    pub fn new(max_level: Level, sink: Sink) -> Self {
        LineSubscriber {
            max_level,
            spans: Mutex::new(Spans::default()),
            sink,
        }
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, Spans> {
        // A panic while holding the lock leaves the list consistent enough
        // for logging.
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `timestamp LEVEL span{fields}:span: target: message key=value\n`
    fn format_event(&self, event: &Event<'_>, now: SystemTime) -> String {
        let meta = event.metadata();
        let mut line = String::with_capacity(128);
        let level = match *meta.level() {
            Level::TRACE => "TRACE",
            Level::DEBUG => "DEBUG",
            Level::INFO => " INFO",
            Level::WARN => " WARN",
            Level::ERROR => "ERROR",
        };
        // Writing to a String fails only when a value's Debug or Display
        // does; the line is then printed as far as it got.
        let _ = write!(line, "{} {level} ", Timestamp(now));

        let innermost = if event.is_contextual() {
            innermost_entered()
        } else {
            event.parent().map(Id::into_u64)
        };
        if let Some(innermost) = innermost {
            let spans = self.spans();
            let mut scope = Vec::new();
            let mut next = spans.get(innermost);
            while let Some(span) = next {
                scope.push(span);
                next = span.parent.and_then(|p| spans.get(p));
            }
            for span in scope.iter().rev() {
                line.push_str(span.metadata.name());
                if !span.fields.is_empty() {
                    let _ = write!(line, "{{{}}}", span.fields);
                }
                line.push(':');
            }
            if !scope.is_empty() {
                line.push(' ');
            }
        }

        let _ = write!(line, "{}: ", meta.target());
        event.record(&mut FieldWriter::new(&mut line));
        line.push('\n');
        line
    }
}

impl Subscriber for LineSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max_level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max_level))
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let mut fields = String::new();
        attributes.record(&mut FieldWriter::new(&mut fields));
        let parent = if attributes.is_contextual() {
            innermost_entered()
        } else {
            attributes.parent().map(Id::into_u64)
        };
        let mut spans = self.spans();
        let parent = parent.filter(|&p| match spans.get_mut(p) {
            Some(parent) => {
                parent.refs += 1;
                true
            }
            None => false,
        });
        spans.next_id += 1;
        let id = spans.next_id;
        spans.live.push(SpanData {
            id,
            metadata: attributes.metadata(),
            fields,
            parent,
            refs: 1,
        });
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(span) = self.spans().get_mut(span.into_u64()) {
            let first = span.fields.is_empty();
            values.record(&mut FieldWriter {
                out: &mut span.fields,
                first,
            });
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let line = self.format_event(event, SystemTime::now());
        (self.sink)(&line);
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if let Some(at) = entered.iter().rposition(|&e| e == id) {
                entered.remove(at);
            }
        });
    }

    fn clone_span(&self, span: &Id) -> Id {
        if let Some(data) = self.spans().get_mut(span.into_u64()) {
            data.refs += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        self.spans().release(span.into_u64())
    }

    fn current_span(&self) -> Current {
        match innermost_entered().and_then(|id| Some((id, self.spans().get(id)?.metadata))) {
            Some((id, metadata)) => Current::new(Id::from_u64(id), metadata),
            None => Current::none(),
        }
    }
}

/// Writes fields as `tracing-subscriber`'s default field formatter does:
/// the message bare, the others as `name=Debug`, separated by spaces.
struct FieldWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> FieldWriter<'a> {
    fn new(out: &'a mut String) -> Self {
        FieldWriter { out, first: true }
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self.record_debug(
                field,
                &format_args!(
                    "{} {}.sources={}",
                    Escaped(format_args!("{value}")),
                    field.name(),
                    ErrorSources(source)
                ),
            ),
            None => self.record_debug(field, &format_args!("{}", Escaped(format_args!("{value}")))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        let _ = match field.name() {
            // The message may come from the network (error texts): keep
            // terminal escapes in it from reaching the operator's terminal.
            "message" => write!(self.out, "{:?}", Escaped(value)),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.out, "{name}={value:?}")
            }
        };
    }
}

/// An error's chain of sources as a list: `[first, second]`.
struct ErrorSources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorSources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&Escaped(format_args!("{error}")));
            next = error.source();
        }
        list.finish()
    }
}

/// Formats its value with the control characters that terminals act on
/// (ESC, BEL, BS, FF, DEL and the C1 codes) written as escapes.
struct Escaped<T>(T);

impl<T: fmt::Debug> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{:?}", self.0)
    }
}

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// RFC 3339 in UTC with microseconds: `2024-05-01T12:00:00.123456Z`.
struct Timestamp(SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                }
            }
        };
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let second_of_day = secs.rem_euclid(86_400);
        if year > 9999 {
            write!(f, "+{year}")?;
        } else if year < 0 {
            write!(f, "{year:05}")?;
        } else {
            write!(f, "{year:04}")?;
        }
        write!(
            f,
            "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60,
            nanos / 1_000
        )
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    fn at(secs: i64, nanos: u32) -> String {
        let time = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        };
        Timestamp(time).to_string()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1_999), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            at(1_714_564_800, 123_456_789),
            "2024-05-01T12:00:00.123456Z"
        );
        assert_eq!(
            at(4_102_444_799, 999_999_999),
            "2099-12-31T23:59:59.999999Z"
        );
        assert_eq!(at(-1, 500_000_000), "1969-12-31T23:59:59.500000Z");
        assert_eq!(at(253_402_300_800, 0), "+10000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn civil_dates_match_a_day_by_day_count() {
        let (mut year, mut month, mut day) = (1970_i64, 1_u32, 1_u32);
        for days in 0..(800 * 366) {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_days = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_days {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    /// Runs `f` under a subscriber at `level`, returns what it printed with
    /// the timestamps cut off.
    fn capture(level: Level, f: impl FnOnce()) -> Vec<String> {
        let out = Arc::new(Mutex::new(String::new()));
        let sink = {
            let out = out.clone();
            move |line: &str| out.lock().unwrap().push_str(line)
        };
        tracing::subscriber::with_default(LineSubscriber::new(level, Box::new(sink)), f);
        let out = out.lock().unwrap();
        out.lines()
            .map(|l| {
                let (time, rest) = l.split_once(' ').unwrap();
                assert!(time.ends_with('Z') && time.len() == 27, "{time}");
                rest.to_owned()
            })
            .collect()
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn events_print_level_target_message_and_fields() {
        let lines = capture(Level::INFO, || {
            tracing::info!("starting");
            tracing::warn!(version = 3_u64, name = "a b", flow = ?(53, "udp"), reason = %"x y", "applied");
            tracing::error!(
                r#type = "t",
                ok = true,
                ratio = 0.5,
                "{} and {:?}",
                1,
                "two"
            );
            tracing::info!(count = 2);
            tracing::debug!("hidden");
            tracing::trace!("hidden");
        });
        assert_eq!(
            lines,
            [
                " INFO isdf_agent::sys::logging::tests: starting",
                " WARN isdf_agent::sys::logging::tests: applied version=3 name=\"a b\" flow=(53, \"udp\") reason=x y",
                "ERROR isdf_agent::sys::logging::tests: 1 and \"two\" type=\"t\" ok=true ratio=0.5",
                " INFO isdf_agent::sys::logging::tests: count=2",
            ]
        );
    }

    #[test]
    fn the_level_filters_events() {
        let lines = capture(Level::TRACE, || {
            tracing::debug!("d");
            tracing::trace!(target: "elsewhere", "t");
        });
        assert_eq!(
            lines,
            [
                "DEBUG isdf_agent::sys::logging::tests: d",
                "TRACE elsewhere: t",
            ]
        );
        assert!(capture(Level::ERROR, || tracing::warn!("w")).is_empty());
    }

    #[test]
    fn messages_have_terminal_escapes_escaped() {
        let lines = capture(Level::INFO, || {
            let text = "red\x1b[31m bell\x07 \u{9b}";
            tracing::info!(text, "from the server: {text}");
        });
        assert_eq!(
            lines,
            [" INFO isdf_agent::sys::logging::tests: from the server: red\\x1b[31m bell\\x07 \\u{9b} text=\"red\\u{1b}[31m bell\\u{7} \\u{9b}\""]
        );
    }

    #[test]
    fn errors_print_their_sources() {
        let lines = capture(Level::INFO, || {
            let error = Outer(std::io::Error::other("inner"));
            tracing::warn!(error = &error as &dyn std::error::Error, "failed");
        });
        assert_eq!(
            lines,
            [" WARN isdf_agent::sys::logging::tests: failed error=outer error.sources=[inner]"]
        );
    }

    #[test]
    fn events_in_spans_print_the_scope_from_the_root() {
        let lines = capture(Level::INFO, || {
            let outer = tracing::info_span!("apply", now_ms = 7_i64);
            let _outer = outer.enter();
            tracing::info!("in outer");
            {
                let inner = tracing::info_span!("remove", done = tracing::field::Empty);
                let _inner = inner.enter();
                tracing::info!("in inner");
                inner.record("done", 2);
                tracing::info!("recorded");
            }
            let hidden = tracing::debug_span!("hidden", x = 1);
            let _hidden = hidden.enter();
            tracing::info!("back");
        });
        assert_eq!(
            lines,
            [
                " INFO apply{now_ms=7}: isdf_agent::sys::logging::tests: in outer",
                " INFO apply{now_ms=7}:remove: isdf_agent::sys::logging::tests: in inner",
                " INFO apply{now_ms=7}:remove{done=2}: isdf_agent::sys::logging::tests: recorded",
                " INFO apply{now_ms=7}: isdf_agent::sys::logging::tests: back",
            ]
        );
    }

    #[test]
    fn closed_spans_are_forgotten() {
        let subscriber = LineSubscriber::new(Level::INFO, Box::new(|_| {}));
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            let parent = tracing::info_span!("parent");
            let child = parent.in_scope(|| tracing::info_span!("child"));
            let copy = child.clone();
            drop(parent);
            drop(child);
            drop(copy);
        });
        let subscriber = dispatch.downcast_ref::<LineSubscriber>().unwrap();
        assert!(subscriber.spans().live.is_empty());
    }
}
