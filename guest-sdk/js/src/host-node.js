// `#host` outside a component (plain Node: unit tests). There is no host
// here: pass one to `exportAgent(Agent, { host })`, e.g. `new FakeHost()`
// from `rollout-guest/testing`.

function noHost() {
  throw new Error(
    'rollout-guest: no host outside a component; pass one to exportAgent(Agent, { host }) ' +
      '(e.g. new FakeHost() from "rollout-guest/testing")',
  );
}

export const chat = noHost;
export const logEvent = noHost;
export const debugLogEnabled = noHost;
export const complete = noHost;
