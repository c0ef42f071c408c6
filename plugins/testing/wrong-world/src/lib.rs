//! A component that targets an older, incompatible agent interface: the host
//! must refuse to load it with a one-line reason.

wit_bindgen::generate!({
    inline: "
        package osmosis:rollout@0.0.1;

        interface agent {
            name: func() -> string;
        }

        world rollout-agent {
            export agent;
        }
    ",
});

struct WrongWorld;

impl exports::osmosis::rollout::agent::Guest for WrongWorld {
    fn name() -> String {
        "wrong-world".into()
    }
}

export!(WrongWorld);
