//! libtorch, the model server's peer, proven against its real client (tch). Also makes cargo
//! build the `warden-model` binary that the agent's tests exec.

#[test]
fn tch_forward_pass_survives_save_and_load() {
    use tch::nn::{self, Module, OptimizerConfig};
    use tch::{Device, Kind, Tensor};

    tch::manual_seed(7);
    let build = |vs: &nn::VarStore| {
        let root = vs.root();
        nn::seq()
            .add(nn::linear(&root / "l1", 4, 16, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&root / "l2", 16, 3, Default::default()))
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs);
    // One optimiser step so the saved weights are not just the initialisation.
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let x = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
    let loss = net.forward(&x).pow_tensor_scalar(2).mean(Kind::Float);
    opt.backward_step(&loss);
    let before = tch::no_grad(|| net.forward(&x));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    vs.save(&path).unwrap();

    tch::manual_seed(99);
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let net2 = build(&vs2);
    let fresh = tch::no_grad(|| net2.forward(&x));
    assert!(
        !fresh.allclose(&before, 1e-6, 1e-6, false),
        "a fresh init must differ"
    );
    vs2.load(&path).unwrap();
    let after = tch::no_grad(|| net2.forward(&x));
    assert_eq!(
        Vec::<f32>::try_from(after.flatten(0, -1)).unwrap(),
        Vec::<f32>::try_from(before.flatten(0, -1)).unwrap()
    );
}
