//! `warden bench all`: the fast-path comparisons of one run, side by side, then one table of
//! each figure against its goal: the gateway vs nginx, a lone caller vs `/health`, 1,000
//! clients, the agent vs node_exporter (CloudWatch + Logs on, fake GPUs, five models), and
//! `warden serve-model` vs TorchServe and FastAPI.
//!
//! Each part runs as its own subcommand does; a part whose peers are not installed is reported
//! as skipped, with the set-up command, instead of failing the run.

use crate::agent::{AgentBench, AgentReport};
use crate::fast::{BenchError, FastBench, FastSummary};
use crate::peers::{PeersBench, PeersSummary};
use std::fmt::Write as _;

pub struct AllBench {
    pub fast: FastBench,
    pub agent: AgentBench,
    pub peers: PeersBench,
}

/// One goal's line: what was measured, the bound, and whether it holds.
struct Goal {
    name: &'static str,
    measured: String,
    goal: &'static str,
    met: Option<bool>,
}

impl AllBench {
    pub fn run(&self) -> Result<String, BenchError> {
        let mut out = String::new();
        let (fast_text, fast) = self.fast.run_summary()?;
        out.push_str(&fast_text);
        out.push('\n');
        let agent = match self.agent.run() {
            Ok(report) => {
                let _ = writeln!(out, "{report}");
                Some(report)
            }
            Err(e) => {
                let _ = writeln!(out, "agent in the issue's setting: skipped ({e})\n");
                None
            }
        };
        let peers = match self.peers.run_summary() {
            Ok((text, summary)) => {
                out.push_str(&text);
                out.push('\n');
                Some(summary)
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "serving peers: skipped ({e}; `warden bench peers --setup` installs them)\n"
                );
                None
            }
        };
        out.push_str(&goals_table(&fast, agent.as_ref(), peers.as_ref()));
        Ok(out)
    }
}

fn goals_table(
    fast: &FastSummary,
    agent: Option<&AgentReport>,
    peers: Option<&PeersSummary>,
) -> String {
    let unmeasured = |name, goal| Goal {
        name,
        measured: "not measured".into(),
        goal,
        met: None,
    };
    let mut goals = vec![
        Goal {
            name: "gateway throughput / nginx's (median)",
            measured: format!("{:.2}x", fast.gateway_vs_nginx),
            goal: ">= 1.00x",
            met: Some(fast.gateway_vs_nginx >= 1.0),
        },
        Goal {
            name: "gateway added p50 vs nginx's (median)",
            measured: format!(
                "{:.3} vs {:.3} ms",
                fast.gateway_added_p50_ms, fast.nginx_added_p50_ms
            ),
            goal: "<= nginx's",
            met: Some(fast.gateway_added_p50_ms <= fast.nginx_added_p50_ms),
        },
        Goal {
            name: "proxy CPU per request: gateway, nginx",
            measured: format!("{:.1} vs {:.1} us", fast.gateway_cpu_us, fast.nginx_cpu_us),
            goal: "(reported)",
            met: None,
        },
        Goal {
            name: "c=1 /infer p50 / /health p50",
            measured: format!("{:.2}x", fast.lone_infer_vs_health),
            goal: "<= 3x",
            met: Some(fast.lone_infer_vs_health <= 3.0),
        },
        Goal {
            name: "1,000 clients: p99, errors",
            measured: format!("{:.0} ms, {}", fast.many_p99_ms, fast.many_errors),
            goal: "<= 912 ms, 0",
            met: Some(fast.many_p99_ms <= 912.0 && fast.many_errors == 0),
        },
    ];
    match agent {
        Some(a) => {
            goals.push(Goal {
                name: "agent CPU (issue's setting)",
                measured: format!("{:.2} % of a core", a.agent.cpu_percent),
                goal: "<= 0.5 %",
                met: Some(a.agent.cpu_percent <= 0.5),
            });
            goals.push(Goal {
                name: "agent peak RSS (issue's setting)",
                measured: format!("{:.1} MB", a.agent.peak_rss_mb),
                goal: "<= 25 MB",
                met: Some(a.agent.peak_rss_mb <= 25.0),
            });
            if let Some(ne) = &a.node_exporter {
                goals.push(Goal {
                    name: "agent / node_exporter (CPU, RSS)",
                    measured: format!(
                        "{:.2}x, {:.2}x",
                        crate::fast::ratio(a.agent.cpu_percent, ne.cpu_percent),
                        crate::fast::ratio(a.agent.peak_rss_mb, ne.peak_rss_mb)
                    ),
                    goal: "(reported)",
                    met: None,
                });
            }
        }
        None => {
            goals.push(unmeasured("agent CPU (issue's setting)", "<= 0.5 %"));
            goals.push(unmeasured("agent peak RSS (issue's setting)", "<= 25 MB"));
        }
    }
    match peers {
        Some(p) => {
            goals.push(Goal {
                name: "serving / TorchServe (c=64)",
                measured: format!("{:.2}x", p.vs_torchserve),
                goal: ">= 1.5x",
                met: Some(p.vs_torchserve >= 1.5),
            });
            goals.push(Goal {
                name: "serving / FastAPI+torch (c=64)",
                measured: format!("{:.2}x", p.vs_fastapi),
                goal: ">= 3x",
                met: Some(p.vs_fastapi >= 3.0),
            });
        }
        None => {
            goals.push(unmeasured("serving / TorchServe (c=64)", ">= 1.5x"));
            goals.push(unmeasured("serving / FastAPI+torch (c=64)", ">= 3x"));
        }
    }
    let mut out = String::from("goals (this run)\n");
    let _ = writeln!(
        out,
        "{:<38} {:>22} {:>14}  met",
        "figure", "measured", "goal"
    );
    for g in goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<38} {:>22} {:>14}  {met}",
            g.name, g.measured, g.goal
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(gateway_vs_nginx: f64, lone: f64) -> FastSummary {
        FastSummary {
            gateway_vs_nginx,
            nginx_added_p50_ms: 0.4,
            gateway_added_p50_ms: 0.6,
            gateway_cpu_us: 30.0,
            nginx_cpu_us: 20.0,
            lone_infer_vs_health: lone,
            many_p99_ms: 300.0,
            many_errors: 0,
        }
    }

    #[test]
    fn each_goal_is_judged_from_its_figure_and_missing_parts_say_so() {
        let table = goals_table(&fast(1.1, 3.5), None, None);
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no line {name} in\n{table}"))
                .to_string()
        };
        assert!(line("gateway throughput").ends_with("yes"));
        assert!(line("gateway added p50").ends_with("NO"));
        assert!(line("c=1 /infer").ends_with("NO"));
        assert!(line("1,000 clients").ends_with("yes"));
        assert!(line("agent CPU").contains("not measured"));
        assert!(line("serving / TorchServe").contains("not measured"));
        let peers = PeersSummary {
            vs_torchserve: 5.0,
            vs_fastapi: 2.0,
        };
        let table = goals_table(&fast(0.9, 2.0), None, Some(&peers));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("serving / TorchServe") && l.ends_with("yes"))
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("serving / FastAPI") && l.ends_with("NO"))
        );
    }
}
