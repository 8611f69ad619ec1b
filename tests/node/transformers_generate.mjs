// Greedy generation with transformers.js (Node, onnxruntime-node's CPU backend) from a local
// folder: node transformers_generate.mjs FOLDER PROMPT MAX_NEW_TOKENS DTYPE
// Prints one JSON line: {"prompt_ids": [...], "new_ids": [...], "text": "..."}.
import path from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, env } from "@huggingface/transformers";

const [folder, prompt, maxNew, dtype] = process.argv.slice(2);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(folder)) + "/";
const name = path.basename(path.resolve(folder));
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForCausalLM.from_pretrained(name, { dtype: dtype || "fp32", device: "cpu" });
const inputs = tokenizer(prompt);
const out = await model.generate({ ...inputs, max_new_tokens: Number(maxNew), do_sample: false });
const all = Array.from(out.tolist()[0], Number);
const promptIds = Array.from(inputs.input_ids.tolist()[0], Number);
const newIds = all.slice(promptIds.length);
console.log(JSON.stringify({ prompt_ids: promptIds, new_ids: newIds, text: tokenizer.decode(newIds, { skip_special_tokens: true }) }));
