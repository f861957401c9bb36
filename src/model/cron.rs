//! Validation of five-field cron expressions (`minute hour day month day_of_week`), the syntax of
//! `schedule.cron`: `*`, `*/S`, `A`, `A-B`, `A/S`, `A-B/S`, comma lists, month names (`jan`) and
//! weekday names (`mon`, with 0 = Monday as in dstack's scheduler), and `last` for the day.

const FIELDS: [(&str, i64, i64); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("day_of_week", 0, 6),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Check one cron expression.
pub fn check(expression: &str) -> Result<(), String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "invalid cron expression `{expression}`: expected 5 fields (minute hour day month weekday), found {}",
            fields.len()
        ));
    }
    for (field, (name, min, max)) in fields.iter().zip(FIELDS) {
        for element in field.split(',') {
            check_element(element, name, min, max).map_err(|e| {
                format!("invalid cron expression `{expression}`: {name} `{element}`: {e}")
            })?;
        }
    }
    Ok(())
}

fn name_value(text: &str, field: &str) -> Option<Result<i64, String>> {
    let lower = text.to_ascii_lowercase();
    let (names, what, offset): (&[&str], &str, i64) = match field {
        "month" => (&MONTHS, "month", 1),
        "day_of_week" => (&WEEKDAYS, "weekday", 0),
        _ => return None,
    };
    if !lower.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let word: String = lower
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    Some(
        names
            .iter()
            .position(|n| *n == word)
            .map(|i| i as i64 + offset)
            .ok_or_else(|| format!("unknown {what} name `{text}`")),
    )
}

fn check_element(element: &str, field: &str, min: i64, max: i64) -> Result<(), String> {
    if element.is_empty() {
        return Err("empty value".into());
    }
    let (body, step) = match element.split_once('/') {
        Some((body, step)) => (body, Some(step)),
        None => (element, None),
    };
    let step = step
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| format!("step `{s}` is not a number"))
        })
        .transpose()?;
    if step == Some(0) {
        return Err("the step must be greater than 0".into());
    }
    if body == "*" {
        if let Some(step) = step
            && step > max - min
        {
            return Err(format!(
                "the step {step} is larger than the range {min}-{max}"
            ));
        }
        return Ok(());
    }
    if field == "day" && body.to_ascii_lowercase().starts_with("last") {
        return Ok(());
    }
    let (first, last) = match body.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let value = |text: &str| -> Result<i64, String> {
        if let Some(named) = name_value(text, field) {
            return named;
        }
        text.parse::<i64>()
            .map_err(|_| format!("`{text}` is not a number"))
    };
    let first = value(first)?;
    let last = last.map(value).transpose()?;
    if first < min {
        return Err(format!("{first} is below the minimum {min}"));
    }
    if let Some(last) = last {
        if first > last {
            return Err(format!("the range {first}-{last} is reversed"));
        }
        if last > max {
            return Err(format!("{last} is above the maximum {max}"));
        }
    } else if first > max {
        return Err(format!("{first} is above the maximum {max}"));
    }
    if let Some(step) = step {
        let span = last.unwrap_or(max) - first;
        if step > span && !(field == "day_of_week" && body.chars().any(|c| c.is_ascii_alphabetic()))
        {
            return Err(format!("the step {step} is larger than the range"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_common_expressions() {
        for ok in [
            "* * * * *",
            "0 8 * * mon-fri",
            "*/15 0-6 1,15 jan-jun 0",
            "30 2 30 2 *",
            "0 0 last * *",
            "5-10/2 * * * *",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "@daily",
            "* * * *",
            "* * * * * *",
            "*/0 * * * *",
            "*/60 * * * *",
            "60 * * * *",
            "* * * * 7",
            "* * * foo *",
            "* * * * monday",
            "L * * * *",
            "5-1 * * * *",
            "* * 0 * *",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
