/**
 * The struct layouts qtune declares for koffi match the loaded ggml library: every field is read back
 * through a real tensor, context, device or type and compared with what ggml's own functions report.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { GGML_TYPE_IDS } from '../../src/engine/dtype.js';
import {
  CGraphHeadStruct,
  CGraphStruct,
  DevPropsStruct,
  GGML_OBJECT_SIZE,
  TensorStruct,
  TypeTraitsStruct,
  koffi,
} from '../../src/engine/ggml.js';
import { getEngine } from '../../src/engine/library.js';
import { ENGINE_RELEASES } from '../../src/engine/paths.js';
import { NativeBuffer, NativeContext } from '../../src/engine/memory.js';

interface TensorFields {
  type: number;
  buffer: unknown;
  ne: ArrayLike<number | bigint>;
  nb: (number | bigint)[];
  op: number;
  op_params: Int32Array;
  flags: number;
  src: unknown[];
  view_src: unknown;
  view_offs: number | bigint;
  data: unknown;
  name: string;
}

const addr = (p: unknown) => (p === null ? 0n : koffi.address(p));

describe('declared ggml struct layouts match the library', () => {
  const { api } = getEngine();

  it('the loaded ggml is a release the declarations are checked against, the one its package has', () => {
    const { info } = getEngine();
    const release = ENGINE_RELEASES.find((r) => r.ggml === info.ggmlVersion);
    assert.ok(
      release !== undefined,
      `ggml ${info.ggmlVersion} is not among ${ENGINE_RELEASES.map((r) => r.ggml).join(', ')}`,
    );
    if (info.kind === 'prebuilt') assert.ok(info.release.endsWith(`@${release.nodeLlamaCpp}`), info.release);
  });

  it('ggml_tensor has the size ggml reports (tensor overhead minus ggml_object)', () => {
    assert.equal(koffi.sizeof(TensorStruct) + GGML_OBJECT_SIZE, api.tensor_overhead());
  });

  it('ggml_tensor fields: type, ne, nb, name, op, src, view_src, view_offs, buffer, data', () => {
    const ctx = new NativeContext(8);
    try {
      const t = api.new_tensor_4d(ctx.ptr, GGML_TYPE_IDS.f16, 3, 5, 7, 2);
      api.set_name(t, 'layout-probe');
      const f = koffi.decode(t, TensorStruct) as TensorFields;
      assert.equal(f.type, GGML_TYPE_IDS.f16);
      assert.deepEqual(Array.from(f.ne, Number), [3, 5, 7, 2]);
      assert.equal(Number(f.nb[0]), api.element_size(t));
      assert.equal(Number(f.nb[1]), api.row_size(GGML_TYPE_IDS.f16, 3));
      assert.equal(Number(f.nb[2]), Number(f.nb[1]) * 5);
      assert.equal(Number(f.nb[3]), Number(f.nb[2]) * 7);
      assert.equal(Number(f.nb[3]) * 2, api.nbytes(t));
      assert.equal(f.name, api.get_name(t));
      assert.equal(f.op, 0, 'a new tensor has op NONE');

      const v = api.view_4d(
        ctx.ptr,
        t,
        3,
        2,
        7,
        2,
        Number(f.nb[1]),
        Number(f.nb[2]),
        Number(f.nb[3]),
        2 * Number(f.nb[1]),
      );
      const fv = koffi.decode(v, TensorStruct) as TensorFields;
      assert.equal(api.op_desc(v), 'VIEW');
      assert.notEqual(fv.op, 0);
      assert.equal(addr(fv.src[0]), addr(t));
      assert.equal(addr(fv.view_src), addr(t));
      assert.equal(Number(fv.view_offs), 2 * Number(f.nb[1]));
      assert.deepEqual(
        Array.from(fv.op_params.slice(0, 1)),
        [2 * Number(f.nb[1])],
        'view offset is op_params[0]',
      );
      assert.equal(addr(fv.src[1]), 0n);

      const buffer = NativeBuffer.forContext(ctx, cpuBackend());
      try {
        const fa = koffi.decode(t, TensorStruct) as TensorFields;
        assert.equal(addr(fa.buffer), koffi.address(buffer.ptr));
        assert.equal(addr(fa.data), addr(api.get_data(t)));
        assert.notEqual(addr(fa.data), 0n);
      } finally {
        buffer.free();
      }
    } finally {
      ctx.free();
    }
  });

  it('ggml_type_traits: name, block size, type size, quantized flag', () => {
    for (const [name, id] of [
      ['f32', 0],
      ['f16', 1],
      ['q4_0', 2],
      ['q8_0', 8],
      ['q4_K', 12],
      ['iq4_nl', 20],
      ['bf16', 30],
    ] as const) {
      const tr = koffi.decode(api.get_type_traits(id), TypeTraitsStruct) as {
        type_name: string;
        blck_size: number | bigint;
        type_size: number | bigint;
        is_quantized: boolean;
        to_float: unknown;
      };
      assert.equal(tr.type_name, name);
      assert.equal(tr.type_name, api.type_name(id));
      assert.equal(Number(tr.blck_size), api.blck_size(id));
      assert.equal(Number(tr.type_size), api.type_size(id));
      assert.equal(tr.is_quantized, api.is_quantized(id));
      if (tr.is_quantized) assert.notEqual(tr.to_float, null);
    }
  });

  it('ggml_backend_dev_props: name, description, memory, type', () => {
    const dev = cpuBackend().devPtr;
    const props: Record<string, unknown> = {};
    api.backend_dev_get_props(dev, props);
    const free: [number | bigint | null] = [null];
    const total: [number | bigint | null] = [null];
    api.backend_dev_memory(dev, free, total);
    assert.equal(props['name'], api.backend_dev_name(dev));
    assert.equal(props['description'], api.backend_dev_description(dev));
    assert.equal(Number(props['memory_total']), Number(total[0]));
    assert.equal(props['type'], api.backend_dev_type(dev));
    assert.equal(typeof (props['caps'] as { async: unknown }).async, 'boolean');
    assert.ok(koffi.sizeof(DevPropsStruct) >= 48);
  });

  it('ggml_cgraph head: size, node and leaf counts', () => {
    const ctx = new NativeContext(16, 64);
    try {
      const a = api.new_tensor_1d(ctx.ptr, GGML_TYPE_IDS.f32, 4);
      const b = api.new_tensor_1d(ctx.ptr, GGML_TYPE_IDS.f32, 4);
      const g = api.new_graph_custom(ctx.ptr, 64, false);
      api.build_forward_expand(g, api.mul(ctx.ptr, api.add(ctx.ptr, a, b), b));
      const head = koffi.decode(g, CGraphHeadStruct) as { size: number; n_nodes: number; n_leafs: number };
      assert.equal(head.size, 64);
      assert.equal(head.n_nodes, api.graph_n_nodes(g));
      assert.equal(head.n_nodes, 2);
      assert.equal(head.n_leafs, 2, 'a and b');
    } finally {
      ctx.free();
    }
  });

  it('ggml_cgraph in full, as ggml_graph_view returns it: a one-node view shares the node array', () => {
    const ctx = new NativeContext(16, 64);
    try {
      const a = api.new_tensor_1d(ctx.ptr, GGML_TYPE_IDS.f32, 4);
      const b = api.new_tensor_1d(ctx.ptr, GGML_TYPE_IDS.f32, 4);
      const g = api.new_graph_custom(ctx.ptr, 64, false);
      api.build_forward_expand(g, api.mul(ctx.ptr, api.add(ctx.ptr, a, b), b));
      type Full = {
        size: number;
        n_nodes: number;
        nodes: unknown;
        leafs: unknown;
        visited_hash_set: { size: number | bigint };
        order: number;
      };
      const full = koffi.decode(g, CGraphStruct) as Full;
      assert.equal(full.n_nodes, 2);
      assert.equal(koffi.address(koffi.decode(full.nodes, 'void *')), koffi.address(api.graph_node(g, 0)));
      // ggml sizes the hash set to hold every node and leaf: at least 2·64, a prime below 2^20 here
      const hash = Number(full.visited_hash_set.size);
      assert.ok(hash >= 128 && hash < 2 ** 20, `hash set size ${hash}`);
      assert.equal(full.order, 0, 'GGML_CGRAPH_EVAL_ORDER_LEFT_TO_RIGHT');
      const view = api.graph_view(g, 1, 2) as unknown as Full;
      assert.equal(view.size, 0);
      assert.equal(view.n_nodes, 1);
      assert.equal(koffi.address(view.nodes), koffi.address(full.nodes) + 8n);
      assert.equal(Number(view.visited_hash_set.size), hash);
      // 3 ints (+4 padding), 5 pointers, the hash set (size_t + 2 pointers), order (+4), uid: 96 on 64-bit
      assert.equal(koffi.sizeof(CGraphStruct), 96);
    } finally {
      ctx.free();
    }
  });
});
