//! What the status pages share besides `templates/base.html`: how they
//! write numbers for people (the balancer's `/lb`, an instance's
//! `/status.html`). Their JSON twins keep the raw figures.

/// `45 s`, `2 min 5 s`, `2 h 13 min`, `3 d 4 h`: two units at most, which is
/// all a glance at a status page needs.
pub fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let pair = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big} {bu}")
        } else {
            format!("{big} {bu} {small} {su}")
        }
    };
    match secs {
        0..60 => format!("{s} s"),
        60..3600 => pair(m, "min", s, "s"),
        3600..86_400 => pair(h, "h", m, "min"),
        _ => pair(d, "d", h, "h"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn durations_read_as_two_units_at_most() {
        assert_eq!(human_secs(0), "0 s");
        assert_eq!(human_secs(59), "59 s");
        assert_eq!(human_secs(60), "1 min");
        assert_eq!(human_secs(125), "2 min 5 s");
        assert_eq!(human_secs(7980), "2 h 13 min");
        assert_eq!(human_secs(7200), "2 h");
        assert_eq!(human_secs(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
    }
}
