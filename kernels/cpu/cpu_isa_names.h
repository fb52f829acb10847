/*
 * cpu_isa_names.h - every external name of the CPU backend's kernels, with
 * the ISA level appended.
 *
 * The files of kernels/cpu/ are compiled once per ISA level (the Makefile's
 * CPU_LEVELS: generic, avx2 and avx512 on x86-64), each time with that level's
 * compiler flags and -DNB_CPU_ISA=<level>. These defines turn, for example,
 * nb_cpu_gelu_fwd into nb_cpu_gelu_fwd_avx2 in the avx2 objects, so the copies
 * link side by side and the sources keep their plain names.
 * kernels/cpu_level.c picks one copy's table at start-up.
 *
 * A new external function in kernels/cpu/ needs a line here; forgetting it is
 * a duplicate-symbol error at link time, never a silent mix of levels.
 */
#ifndef NB_CPU_ISA_NAMES_H
#define NB_CPU_ISA_NAMES_H

#ifndef NB_CPU_ISA
#error "kernels/cpu/ is compiled once per ISA level: build it through the Makefile, which defines NB_CPU_ISA"
#endif

#define NB_CPU_ISA_CAT_(name, isa) name##_##isa
#define NB_CPU_ISA_CAT(name, isa) NB_CPU_ISA_CAT_(name, isa)
#define NB_CPU_ISA_SYM(name) NB_CPU_ISA_CAT(name, NB_CPU_ISA)

/* cpu_backend.c */
#define nb_cpu_iface NB_CPU_ISA_SYM(nb_cpu_iface)
/* cpu_codec.c, cpu_codec_topk.c */
#define nb_cpu_codec_ops NB_CPU_ISA_SYM(nb_cpu_codec_ops)
#define nb_cpu_codec_topk NB_CPU_ISA_SYM(nb_cpu_codec_topk)
#define nb_cpu_codec_scatter NB_CPU_ISA_SYM(nb_cpu_codec_scatter)
/* cpu_ops_*.c */
#define nb_cpu_bias_add NB_CPU_ISA_SYM(nb_cpu_bias_add)
#define nb_cpu_bias_grad NB_CPU_ISA_SYM(nb_cpu_bias_grad)
#define nb_cpu_embed_fwd NB_CPU_ISA_SYM(nb_cpu_embed_fwd)
#define nb_cpu_embed_bwd NB_CPU_ISA_SYM(nb_cpu_embed_bwd)
#define nb_cpu_token_shift NB_CPU_ISA_SYM(nb_cpu_token_shift)
#define nb_cpu_layernorm_fwd NB_CPU_ISA_SYM(nb_cpu_layernorm_fwd)
#define nb_cpu_layernorm_bwd NB_CPU_ISA_SYM(nb_cpu_layernorm_bwd)
#define nb_cpu_gelu_fwd NB_CPU_ISA_SYM(nb_cpu_gelu_fwd)
#define nb_cpu_gelu_bwd NB_CPU_ISA_SYM(nb_cpu_gelu_bwd)
#define nb_cpu_gelu_erf_fwd NB_CPU_ISA_SYM(nb_cpu_gelu_erf_fwd)
#define nb_cpu_gelu_erf_bwd NB_CPU_ISA_SYM(nb_cpu_gelu_erf_bwd)
#define nb_cpu_attention_fwd NB_CPU_ISA_SYM(nb_cpu_attention_fwd)
#define nb_cpu_attention_bwd NB_CPU_ISA_SYM(nb_cpu_attention_bwd)
#define nb_cpu_xent_fwd_bwd NB_CPU_ISA_SYM(nb_cpu_xent_fwd_bwd)
#define nb_cpu_sumsq NB_CPU_ISA_SYM(nb_cpu_sumsq)
#define nb_cpu_adamw NB_CPU_ISA_SYM(nb_cpu_adamw)
/* cpu_scratch.c */
#define nb_cpu_scratch NB_CPU_ISA_SYM(nb_cpu_scratch)
#define nb_cpu_scratch_free NB_CPU_ISA_SYM(nb_cpu_scratch_free)
#define nb_cpu_scratch_slot NB_CPU_ISA_SYM(nb_cpu_scratch_slot)
#define nb_cpu_precision NB_CPU_ISA_SYM(nb_cpu_precision)
#define nb_cpu_set_precision NB_CPU_ISA_SYM(nb_cpu_set_precision)
#define nb_cpu_matmul_f32 NB_CPU_ISA_SYM(nb_cpu_matmul_f32)

#endif /* NB_CPU_ISA_NAMES_H */
