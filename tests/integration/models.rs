//! The five built-in models answer like engineers, through the public API of a real
//! `warden run` (shipped weights installed by `warden models init` on first start): the four
//! observations of issue 15 reversed, the model cards in `GET /api/v1/models`, and inputs
//! outside the trained ranges answered with a warning; and the gateway's hop to a model over
//! the model's Unix socket.

use super::support::agent::TestAgent;
use super::support::net::free_port;
use serde_json::{Value, json};
use std::time::Duration;

const NAMES: [&str; 5] = [
    "connection-designer",
    "section-optimizer",
    "clash-detector",
    "compliance-checker",
    "risk-analyzer",
];

fn model(name: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\nport = {}\ndevice = \"cpu\"\nthreads = 1\n",
        free_port()
    )
}

struct Api {
    http: reqwest::Client,
    agent: TestAgent,
}

impl Api {
    async fn post(&self, name: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.agent.url(&format!("/api/v1/{name}")))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, name: &str, body: &Value) -> Value {
        let (status, out) = self.post(name, body).await;
        assert_eq!(status, 200, "{name}: {out}\n{}", self.agent.log());
        out
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn connection(scale: f64) -> Value {
    json!({
        "members": [
            {"depth_mm": 310.0, "flange_width_mm": 165.0, "web_thickness_mm": 6.0,
             "flange_thickness_mm": 10.2, "angle_deg": 0.0},
            {"depth_mm": 260.0, "flange_width_mm": 147.0, "web_thickness_mm": 6.3,
             "flange_thickness_mm": 8.6, "angle_deg": 90.0}
        ],
        "loads": {"axial_kn": 20.0 * scale, "shear_kn": 150.0 * scale, "moment_knm": 45.0 * scale},
        "geometry": {"eccentricity_mm": 60.0, "bolt_rows": 3, "plate_thickness_mm": 12.0}
    })
}

fn beam(udl: f64) -> Value {
    json!({"span_m": 6.0, "udl_kn_per_m": udl, "point_load_kn": 10.0, "fy_mpa": 355.0,
           "deflection_limit": 360.0, "restrained": true})
}

/// One step: a beam along x at y = 4, z = 4 and a duct along y at x = 3, height `duct_z`.
fn clash_step(duct_z: usize) -> Value {
    let grid = |f: &dyn Fn(usize, usize, usize) -> bool| -> Value {
        json!(
            (0..8)
                .map(|x| (0..8)
                    .map(|y| (0..8)
                        .map(|z| if f(x, y, z) { 1.0 } else { 0.0 })
                        .collect::<Vec<f64>>())
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        )
    };
    json!({"structure": grid(&|_, y, z| y == 4 && z == 4),
           "services": grid(&|x, _, z| x == 3 && z == duct_z)})
}

fn risk(zone: i64, soil: &str, changes: i64, experience: f64, storeys: i64) -> Value {
    json!({"budget_musd": 42.0, "duration_months": 30.0, "storeys": storeys, "max_span_m": 14.5,
           "seismic_zone": zone, "soil_class": soil, "design_changes": changes,
           "team_experience_years": experience})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_answer_like_engineers_through_the_api() {
    let mut builder = TestAgent::builder();
    for name in NAMES {
        builder = builder.model(model(name));
    }
    let agent = builder.start();
    // Five libtorch processes on a shared 2-core machine: generous, bounded.
    agent.wait_ready(Duration::from_secs(240));
    warden::tls::install_crypto_provider();
    let api = Api {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        agent,
    };

    // 1. connection-designer: ×8 on every load raises the demand/capacity ratio (by 8: the type
    //    depends on the loads' proportions only, and every check is linear in the loads).
    let base = api.ok("connection-designer", &connection(1.0)).await;
    let heavy = api.ok("connection-designer", &connection(8.0)).await;
    assert_eq!(
        base["connection_type"], heavy["connection_type"],
        "{base} vs {heavy}"
    );
    let (r1, r8) = (f(&base["capacity_ratio"]), f(&heavy["capacity_ratio"]));
    assert!(r8 > r1, "×8 loads lowered the ratio: {r1} → {r8}");
    assert!((r8 / r1 - 8.0).abs() < 0.01, "{r1} → {r8}");

    // 2. section-optimizer: at 80–400 kN/m the recommended section is adequate (never reported
    //    overloaded) and more load never gives a lighter one.
    let mut last_mass = 0.0;
    for udl in [20.0, 80.0, 150.0, 250.0, 400.0] {
        let out = api.ok("section-optimizer", &beam(udl)).await;
        let section = out["section"]
            .as_str()
            .unwrap_or_else(|| panic!("{udl}: {out}"));
        assert!(
            f(&out["utilisation"]) <= 1.0,
            "{udl} kN/m: {section} overloaded: {out}"
        );
        assert!(
            f(&out["deflection_utilisation"]) <= 1.0,
            "{udl} kN/m: {out}"
        );
        let mass = f(&out["mass_kg_per_m"]);
        assert!(mass >= last_mass, "{udl} kN/m got a lighter section: {out}");
        last_mass = mass;
    }
    let hopeless = api
        .ok("section-optimizer", &json!({"span_m": 30.0, "udl_kn_per_m": 500.0,
            "point_load_kn": 2000.0, "fy_mpa": 355.0, "deflection_limit": 360.0, "restrained": false}))
        .await;
    assert_eq!(
        hopeless["section"],
        Value::Null,
        "none suffices: {hopeless}"
    );

    // 3. risk-analyzer: zone 4 on soil E with 400 changes and a 6-month team is high; a
    //    two-storey building on rock with an experienced team is low.
    let risky = api.ok("risk-analyzer", &risk(4, "E", 400, 0.5, 12)).await;
    let calm = api.ok("risk-analyzer", &risk(0, "A", 2, 25.0, 2)).await;
    assert_eq!(risky["risk_class"], "high", "{risky}");
    assert_eq!(calm["risk_class"], "low", "{calm}");
    assert!(
        f(&risky["score"]) > f(&calm["score"]) + 0.3,
        "{risky} vs {calm}"
    );

    // 4. clash-detector: a duct crossing a beam clashes; the same duct far from it does not.
    let crossing = api
        .ok("clash-detector", &json!({"steps": [clash_step(4)]}))
        .await;
    let far = api
        .ok("clash-detector", &json!({"steps": [clash_step(0)]}))
        .await;
    let p_cross = f(&crossing["steps"][0]["clash_probability"]);
    let p_far = f(&far["steps"][0]["clash_probability"]);
    assert!(
        p_cross >= 0.5 && p_far < 0.5,
        "crossing {p_cross}, far {p_far}"
    );
    let at = &crossing["steps"][0]["location"];
    assert!(
        (f(&at["x"]) - 3.0).abs() < 0.5 && (f(&at["y"]) - 4.0).abs() < 0.5,
        "{at}"
    );

    // Model cards in GET /api/v1/models: teacher, trained ranges, held-out figures meeting the
    // goals, and the hash of the weights actually served.
    let models: Value = api
        .http
        .get(api.agent.url("/api/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 5);
    for m in models {
        let name = m["name"].as_str().unwrap();
        let card = &m["metadata"]["model_card"];
        assert!(
            card["teacher"]["source"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: {card}"
        );
        assert!(card["trained_ranges"].is_object(), "{name}: {card}");
        let sha = card["weights"]["sha256"].as_str().unwrap_or_default();
        assert_eq!(sha.len(), 64, "{name}: {card}");
        assert_eq!(
            card["weights"]["matches_card"], true,
            "{name} serves its shipped weights"
        );
        let metrics = card["held_out"]["metrics"].as_object().unwrap();
        for (output, metric) in metrics {
            assert!(
                f(&metric["value"]) >= f(&metric["goal"]),
                "{name}.{output}: {metric}"
            );
        }
        assert!(card["training"]["samples"].as_u64().unwrap() > 0, "{name}");
        assert_eq!(
            m["metadata"]["input_schema"]["additionalProperties"], false,
            "{name}"
        );
    }
    let cd = models
        .iter()
        .find(|m| m["name"] == "connection-designer")
        .unwrap();
    assert_eq!(
        cd["metadata"]["model_card"]["trained_ranges"]["loads.shear_kn"],
        json!([-2000.0, 2000.0])
    );

    // Outside the trained range but inside the hard bounds: answered, with a warning.
    let mut far_out = connection(1.0);
    far_out["loads"]["shear_kn"] = json!(9000.0);
    let out = api.ok("connection-designer", &far_out).await;
    assert_eq!(
        out["warnings"],
        json!(["loads.shear_kn 9000 is outside the trained range -2000..2000"]),
        "{out}"
    );
    assert!(
        base.get("warnings").is_none(),
        "in-range answers carry no warnings: {base}"
    );
    // Past the hard bound: a 422 naming the field.
    far_out["loads"]["shear_kn"] = json!(20000.0);
    let (status, err) = api.post("connection-designer", &far_out).await;
    assert_eq!(status, 422, "{err}");
    assert!(err.to_string().contains("loads.shear_kn"), "{err}");
}

/// Connected sockets bound to `path`, as the kernel lists them (the model's side of each
/// connection accepted on its Unix socket).
fn connections_on(path: &std::path::Path) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.to_str().unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
            fields.len() == 8 && fields[5] == "03" && fields[7] == path
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_a_supervised_model_over_its_unix_socket_else_over_its_port() {
    let agent = TestAgent::builder().model(model("risk-analyzer")).start();
    agent.wait_ready(Duration::from_secs(120));
    let socket = agent.socket.with_file_name("model-risk-analyzer.sock");
    assert!(socket.exists(), "no socket beside the control socket");
    assert_eq!(connections_on(&socket), 0);
    warden::tls::install_crypto_provider();
    let client = || reqwest::Client::builder().no_proxy().build().unwrap();
    let api = Api {
        http: client(),
        agent,
    };
    let input = risk(4, "C", 3, 5.0, 12);
    let first = api.ok("risk-analyzer", &input).await;
    for _ in 0..5 {
        assert_eq!(api.ok("risk-analyzer", &input).await, first);
    }
    // At most one model connection per gateway thread (the client may have opened a
    // second connection, on the other thread).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let open = connections_on(&socket);
    assert!(
        (1..=threads).contains(&open),
        "{open} model connections over the socket for one client"
    );

    // The model connection is its gateway thread's, shared by the thread's clients: clients
    // come and go, and a dozen of them at once still make at most one per thread.
    let Api { http, agent } = api;
    drop(http);
    let url = agent.url("/api/v1/risk-analyzer");
    let calls = (0..12).map(|_| {
        let (http, url, input) = (client(), url.clone(), input.clone());
        async move {
            let r = http.post(url).json(&input).send().await.unwrap();
            assert_eq!(r.status(), 200);
            (http, r.json::<Value>().await.unwrap())
        }
    });
    let answered = futures_util::future::join_all(calls).await;
    for (_, answer) in &answered {
        assert_eq!(answer["risk_class"], first["risk_class"]);
    }
    let shared = connections_on(&socket);
    assert!(
        (1..=threads).contains(&shared),
        "{shared} model connections for 12 clients on {threads} gateway threads"
    );
    drop(answered);
    drop(agent);

    // A socket that is gone (removed by hand, say) costs nothing but the hop: the gateway
    // reaches the model on its port.
    let agent = TestAgent::builder().model(model("risk-analyzer")).start();
    agent.wait_ready(Duration::from_secs(120));
    let socket = agent.socket.with_file_name("model-risk-analyzer.sock");
    std::fs::remove_file(&socket).unwrap();
    let fresh = Api {
        http: client(),
        agent,
    };
    assert_eq!(fresh.ok("risk-analyzer", &input).await, first);
    assert_eq!(connections_on(&socket), 0);
}
