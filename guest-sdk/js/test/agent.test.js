import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AgentLoop, Toolbox, exportAgent, tool } from '../src/index.js';
import { FakeHost, assistant, chatError, runAgent, witRequest } from '../src/testing.js';

const double = tool(
  { name: 'double', description: 'Double a number', parameters: { type: 'object', properties: { x: { type: 'number' } } } },
  ({ x }) => x * 2,
);

class Echo extends AgentLoop {
  name = 'echo';

  getTools() {
    return new Toolbox([double]).definitions();
  }

  run(ctx) {
    const messages = [...ctx.request.messages];
    const reply = ctx.chat(messages);
    messages.push(reply.message);
    ctx.complete(messages, { finishReason: reply.finishReason });
  }
}

test('exportAgent is the WIT agent interface: name, get-tools, run', async () => {
  const host = new FakeHost({ replies: [assistant('hello')] });
  const agent = exportAgent(Echo, { host });
  const { name, getTools, run } = agent; // componentize-js calls them unbound
  assert.equal(name(), 'echo');
  assert.deepEqual(await getTools(witRequest()), {
    tag: 'ok',
    val: [
      {
        name: 'double',
        description: 'Double a number',
        parameters: '{"type":"object","properties":{"x":{"type":"number"}}}',
      },
    ],
  });
  assert.deepEqual(await run(witRequest()), { tag: 'ok', val: undefined });
  assert.equal(host.completion.status, 'completed');
  assert.equal(host.completion.finalMessages.at(-1).content, 'hello');
});

test('the default name is the class name, and an instance can be exported', async () => {
  class Unnamed extends AgentLoop {}
  assert.equal(exportAgent(Unnamed).name(), 'Unnamed');
  class Named extends AgentLoop {
    constructor() {
      super();
      this.name = 'set-in-constructor';
    }
  }
  assert.equal(exportAgent(Named).name(), 'set-in-constructor');
  assert.equal(exportAgent({ name: 'plain', getTools: () => [], run() {} }).name(), 'plain');
  assert.deepEqual(await exportAgent(Unnamed, { host: new FakeHost() }).getTools(witRequest()), { tag: 'ok', val: [] });
});

test('getTools accepts OpenAI tools, flat definitions and a Toolbox, and rejects bad lists', async () => {
  const tools = (list) => exportAgent({ name: 'x', getTools: () => list, run() {} }).getTools(witRequest());
  const flat = await tools([{ name: 'a', description: 'A', parameters: { type: 'object' } }]);
  assert.deepEqual(flat.val, [{ name: 'a', description: 'A', parameters: '{"type":"object"}' }]);
  const box = await tools(new Toolbox([double]));
  assert.equal(box.val[0].name, 'double');
  const noSchema = await tools([{ type: 'function', function: { name: 'n' } }]);
  assert.deepEqual(noSchema.val, [{ name: 'n', description: '', parameters: '{"type":"object","properties":{}}' }]);
  assert.deepEqual(await tools('nope'), { tag: 'err', val: 'getTools must return an array of tools, got string' });
  assert.match((await tools([{ description: 'x' }])).val, /^getTools: tool 0 has no name/);
  assert.equal((await tools([{ name: 'p', parameters: 'x' }])).val, "getTools: the parameters of tool 'p' are not a JSON Schema object");
});

test('malformed request JSON fails get-tools and run with the host-sent message', async () => {
  const agent = exportAgent(Echo, { host: new FakeHost() });
  const raw = { ...witRequest(), metadata: 'nope' };
  const result = await agent.run(raw);
  assert.equal(result.tag, 'err');
  assert.match(result.val, /^host sent malformed metadata: /);
  assert.match((await agent.getTools(raw)).val, /^host sent malformed metadata: /);
});

test('an uncaught error in run is the WIT error string: name, message and frame', async () => {
  class Throws extends AgentLoop {
    run() {
      null.boom;
    }
  }
  const { result } = await runAgent(Throws);
  assert.equal(result.tag, 'err');
  assert.match(result.val, /^TypeError: .*null.* \(at .*agent\.test\.js:\d+:\d+\)?\)$/);

  class Async extends AgentLoop {
    async run() {
      await null;
      throw new RangeError('too far');
    }
  }
  assert.match((await runAgent(Async)).result.val, /^RangeError: too far \(at .*agent\.test\.js:\d+:\d+\)?\)$/);

  class ThrowsString extends AgentLoop {
    run() {
      throw 'plain string';
    }
  }
  assert.equal((await runAgent(ThrowsString)).result.val, 'uncaught exception: plain string');
});

test('a chat error escaping run names the error class and the agent line that called chat', async () => {
  const host = new FakeHost({ replies: [chatError('trainer-rejected', { status: 400, body: 'bad request' })] });
  const { result, completion } = await runAgent(Echo, {}, host);
  assert.equal(completion, null);
  assert.match(
    result.val,
    /^TrainerRejectedError: trainer rejected the request with HTTP 400: bad request \(at Echo\.run .*agent\.test\.js:\d+:\d+\)\)$/,
  );
});

test('an error in getTools fails get-tools with its description', async () => {
  class BadTools extends AgentLoop {
    getTools() {
      throw new Error('no tools today');
    }
  }
  const { tools } = await runAgent(BadTools);
  assert.match(tools.val, /^Error: no tools today \(at BadTools\.getTools .*agent\.test\.js:\d+:\d+\)\)$/);
});

test('run without a host outside a component says how to test', async () => {
  const { result } = await exportAgent(Echo).run(witRequest()).then((r) => ({ result: r }));
  assert.match(result.val, /no host outside a component/);
});
