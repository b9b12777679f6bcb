//! `--sensors`, `--sensor CMD`, `--sensor-interval` and the thresholds, checked and resolved into
//! the launch's [`SensorSpec`].

use super::error::{usage, UsageError};
use super::flags::Cli;
use crate::spec::SensorSpec;
use fabrics::sensors::Thresholds;

/// The longest interval: the launch carries it in milliseconds as a `u32`.
const MAX_INTERVAL: f64 = 86_400.0;

/// `None` when no sensor is on. `root`: the test-only [`crate::spec::SENSOR_ROOT_ENV`].
pub fn spec(g: &Cli, root: Option<String>) -> Result<Option<SensorSpec>, UsageError> {
    let thresholds_given = [
        ("--sensor-temp-margin", g.sensor_temp_margin.is_some()),
        ("--sensor-mem-floor", g.sensor_mem_floor.is_some()),
        ("--sensor-load-factor", g.sensor_load_factor.is_some()),
        ("--sensor-edac-ce", g.sensor_edac_ce.is_some()),
        ("--sensor-nic-errors", g.sensor_nic_errors.is_some()),
    ];
    if let Some((flag, _)) = thresholds_given.iter().find(|(_, given)| *given).filter(|_| !g.sensors) {
        return Err(usage(format!("{flag}: a threshold of the built-in sensors, which are off; add --sensors")));
    }
    if !g.sensors && g.sensor.is_empty() {
        return match g.sensor_interval {
            Some(_) => Err(usage("--sensor-interval: no sensor is on; add --sensors (built-in sensors) or --sensor CMD")),
            None => Ok(None),
        };
    }
    let interval = g.sensor_interval.unwrap_or(5.0);
    if !(interval.is_finite() && (0.01..=MAX_INTERVAL).contains(&interval)) {
        return Err(usage(format!("--sensor-interval {interval}: expected seconds from 0.01 to {MAX_INTERVAL}")));
    }
    if let Some(bad) = g.sensor.iter().find(|c| c.trim().is_empty()) {
        return Err(usage(format!("--sensor '{bad}': expected a command")));
    }
    let d = Thresholds::default();
    let margin = g.sensor_temp_margin.unwrap_or(d.temp_margin_c);
    if !(margin.is_finite() && margin >= 0.0) {
        return Err(usage(format!("--sensor-temp-margin {margin}: expected degrees Celsius, 0 or more")));
    }
    let load = g.sensor_load_factor.unwrap_or(d.load_factor);
    if !(load.is_finite() && load > 0.0) {
        return Err(usage(format!("--sensor-load-factor {load}: expected a positive number (times the node's CPUs)")));
    }
    let thresholds = Thresholds {
        temp_margin_c: margin,
        mem_floor: g.sensor_mem_floor.unwrap_or(d.mem_floor),
        load_factor: load,
        edac_ce: g.sensor_edac_ce.unwrap_or(d.edac_ce),
        nic_errors: g.sensor_nic_errors.unwrap_or(d.nic_errors),
    };
    Ok(Some(SensorSpec { builtins: g.sensors, commands: g.sensor.clone(), interval_ms: (interval * 1000.0).round() as u32, thresholds, root: root.filter(|r| !r.is_empty()) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(words: &[&str]) -> Cli {
        Cli::try_parse_from(["rlaunch"].iter().chain(words).chain(&["true"])).unwrap()
    }

    #[test]
    fn off_unless_asked() {
        assert_eq!(spec(&cli(&[]), Some("/fixture".into())).unwrap(), None);
        assert!(spec(&cli(&["--sensor-interval", "1"]), None).unwrap_err().to_string().contains("no sensor is on"));
        let e = spec(&cli(&["--sensor", "x", "--sensor-load-factor", "2"]), None).unwrap_err().to_string();
        assert!(e.starts_with("--sensor-load-factor: a threshold of the built-in sensors, which are off; add --sensors"), "{e}");
    }

    #[test]
    fn defaults_and_flags() {
        let s = spec(&cli(&["--sensor", "check-gpu", "--sensor", "exit 1"]), None).unwrap().unwrap();
        assert_eq!((s.builtins, s.commands.len(), s.interval_ms, s.thresholds, s.root), (false, 2, 5000, Thresholds::default(), None));
        let s = spec(&cli(&["--sensors", "--sensor-interval", "0.25", "--sensor-temp-margin", "2", "--sensor-mem-floor", "1G", "--sensor-load-factor", "1.5", "--sensor-edac-ce", "1", "--sensor-nic-errors", "7"]), Some("/f".into())).unwrap().unwrap();
        assert_eq!(s.interval_ms, 250);
        assert_eq!(s.thresholds, Thresholds { temp_margin_c: 2.0, mem_floor: fabrics::sensors::MemFloor::Bytes(1 << 30), load_factor: 1.5, edac_ce: 1, nic_errors: 7 });
        assert_eq!(s.root.as_deref(), Some("/f"));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for (words, want) in [
            (&["--sensors", "--sensor-interval", "0"][..], "--sensor-interval 0: expected seconds"),
            (&["--sensors", "--sensor-interval", "NaN"][..], "--sensor-interval NaN"),
            (&["--sensors", "--sensor-temp-margin", "-1"][..], "--sensor-temp-margin -1"),
            (&["--sensors", "--sensor-load-factor", "0"][..], "--sensor-load-factor 0"),
            (&["--sensor", " "][..], "--sensor ' ': expected a command"),
        ] {
            let e = spec(&cli(words), None).unwrap_err().to_string();
            assert!(e.starts_with(want), "{words:?}: {e}");
        }
        assert!(Cli::try_parse_from(["rlaunch", "--sensors", "--sensor-mem-floor", "lots", "true"]).is_err());
        assert!(Cli::try_parse_from(["rlaunch", "--sensors", "--sensor-edac-ce", "0", "true"]).is_err());
    }
}
