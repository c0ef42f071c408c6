// The host's imports inside a component. The bundler picks this file for
// `#host` under the `componentize` condition (see package.json "imports");
// componentize-js provides the module `osmosis:rollout/host@0.1.0`.
export { chat, logEvent, debugLogEnabled, complete } from 'osmosis:rollout/host@0.1.0';
