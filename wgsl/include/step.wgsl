// Step: the scalars the host writes before each micro-batch's submit (train.Trainer), so the
// recorded step reads new values without new commands. The optimizer, clipping, loss and dropout
// kernels bind it as `var<storage, read> step: Step`; Python packs it by field name from this
// declaration (kernels.StructLayout), as it does Params. f32 fields only.
struct Step {
  lr: f32,          // the learning rate of this step
  bc1: f32,         // AdamW's bias corrections 1 − β₁^t and 1 − β₂^t
  bc2: f32,
  grad_scale: f32,  // 1 / the step's target tokens (the loss is a mean over them)
  slot: f32,        // the step's slot in the loss history (an integer)
  seed: f32,        // this micro-batch's dropout seed (an integer below 2^24, exact as an f32)
}
