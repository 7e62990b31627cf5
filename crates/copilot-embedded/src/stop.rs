//! Stop sequences over streamed text. Text that could still turn out to be the start of a stop
//! sequence is held back until the next piece decides it, so a client never receives part of a
//! stop sequence.

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self { stops, held: String::new() }
    }

    /// Adds generated text. Returns the text that is now safe to send, and whether a stop sequence
    /// was reached (the stop sequence and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let safe = self.held[..at].to_string();
            self.held.clear();
            return (safe, true);
        }
        let keep = self.longest_suffix_that_starts_a_stop();
        let cut = self.held.len() - keep;
        let safe = self.held[..cut].to_string();
        self.held.drain(..cut);
        (safe, false)
    }

    /// The text still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn longest_suffix_that_starts_a_stop(&self) -> usize {
        let held = self.held.as_str();
        (1..=held.len())
            .rev()
            .filter(|&n| held.is_char_boundary(held.len() - n))
            .find(|&n| {
                let suffix = &held[held.len() - n..];
                self.stops.iter().any(|s| s.len() > n && s.starts_with(suffix))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let (safe, stopped) = matcher.push(piece);
            out.push_str(&safe);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&matcher.finish());
        (out, false)
    }

    #[test]
    fn stops_inside_one_piece() {
        assert_eq!(run(&["END"], &["hello END world"]), ("hello ".into(), true));
    }

    #[test]
    fn stops_across_pieces_without_leaking_the_prefix() {
        let mut matcher = StopMatcher::new(vec!["<|im_end|>".into()]);
        assert_eq!(matcher.push("Hi <|im"), ("Hi ".into(), false));
        assert_eq!(matcher.push("_end|> trailing"), ("".into(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(run(&["\n\n"], &["a\n", "b\n", "c"]), ("a\nb\nc".into(), false));
        assert_eq!(run(&["STOP"], &["ST", "ART"]), ("START".into(), false));
    }

    #[test]
    fn the_earliest_stop_wins() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".into(), true));
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        assert_eq!(run(&["éé"], &["café", "é!"]), ("caf".into(), true));
        assert_eq!(run(&["éx"], &["caféé"]), ("caféé".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
