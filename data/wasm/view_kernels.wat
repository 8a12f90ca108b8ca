;; The inner loops of a view (data/view_kernels.ts): the crop's resampling,
;; brightness, contrast and its mean, the Gaussian blur's box passes and the
;; final ToTensor, in WebAssembly SIMD. Each computes exactly what its TypeScript counterpart in
;; data/transforms.ts computes: float64 sums of float32 (or 8-bit) inputs in
;; the same order, rounded to float32 where the TypeScript stores a
;; Float32Array, two float64 lanes at a time, without bounds checks. Every
;; address is a byte offset into the exported memory; the caller lays the
;; buffers out and checks their sizes. Helpers are written out in the
;; loops, which V8 compiles better than calls.
;;
;; Built into data/wasm/view_kernels_wasm.ts by data/wasm/build.ts.
(module
  (memory (export "memory") 1)

  ;; resizedCrop's horizontal pass: for each of $rows rows ($srcStride
  ;; bytes apart, from $src) and each output column x < $outW, the sum over
  ;; k < count[x] of weight[x * $taps + k] * pixel at byte offset[x] + 3k,
  ;; per channel, stored as float32 RGB at column x (or $outW - 1 - x with
  ;; $flip) of row r of $tmp ($outW * 3 floats a row). Red and green share
  ;; one float64x2, blue the low lane of another.
  (func (export "resizeRows")
    (param $src i32) (param $srcStride i32) (param $rows i32)
    (param $outW i32) (param $offsets i32) (param $counts i32)
    (param $weights i32) (param $taps i32) (param $tmp i32) (param $flip i32)
    (local $r i32) (local $x i32) (local $k i32) (local $n i32)
    (local $row i32) (local $p i32) (local $w i32) (local $q i32)
    (local $px v128) (local $wv v128) (local $rg v128) (local $b v128)
    (local.set $r (i32.const 0))
    (block $rowsDone (loop $rowLoop
      (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $row (i32.add (local.get $src)
        (i32.mul (local.get $r) (local.get $srcStride))))
      (local.set $x (i32.const 0))
      (block $colsDone (loop $colLoop
        (br_if $colsDone (i32.ge_u (local.get $x) (local.get $outW)))
        (local.set $n (i32.load (i32.add (local.get $counts)
          (i32.shl (local.get $x) (i32.const 2)))))
        (local.set $p (i32.add (local.get $row) (i32.load (i32.add
          (local.get $offsets) (i32.shl (local.get $x) (i32.const 2))))))
        (local.set $w (i32.add (local.get $weights) (i32.shl
          (i32.mul (local.get $x) (local.get $taps)) (i32.const 2))))
        (local.set $rg (f64x2.splat (f64.const 0)))
        (local.set $b (f64x2.splat (f64.const 0)))
        (local.set $k (i32.const 0))
        (block $tapsDone (loop $tapLoop
          (br_if $tapsDone (i32.ge_u (local.get $k) (local.get $n)))
          ;; Four bytes R, G, B, (next) widened to int32x4.
          (local.set $px (i32x4.extend_low_i16x8_u (i16x8.extend_low_i8x16_u
            (v128.load32_zero (local.get $p)))))
          (local.set $wv (f64x2.splat (f64.promote_f32 (f32.load (local.get $w)))))
          (local.set $rg (f64x2.add (local.get $rg) (f64x2.mul (local.get $wv)
            (f64x2.convert_low_i32x4_u (local.get $px)))))
          (local.set $b (f64x2.add (local.get $b) (f64x2.mul (local.get $wv)
            (f64x2.convert_low_i32x4_u (i8x16.shuffle
              8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7
              (local.get $px) (local.get $px))))))
          (local.set $p (i32.add (local.get $p) (i32.const 3)))
          (local.set $w (i32.add (local.get $w) (i32.const 4)))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br $tapLoop)))
        (local.set $q (i32.add (local.get $tmp) (i32.mul (i32.const 12) (i32.add
          (i32.mul (local.get $r) (local.get $outW))
          (select
            (i32.sub (i32.sub (local.get $outW) (i32.const 1)) (local.get $x))
            (local.get $x)
            (local.get $flip))))))
        (v128.store64_lane 0 (local.get $q) (f32x4.demote_f64x2_zero (local.get $rg)))
        (f32.store offset=8 (local.get $q)
          (f32.demote_f64 (f64x2.extract_lane 0 (local.get $b))))
        (local.set $x (i32.add (local.get $x) (i32.const 1)))
        (br $colLoop)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rowLoop))))

  ;; resizedCrop's vertical pass: output row y (of $rowLen floats) is
  ;; weight[y * $taps] * tmp row starts[y], plus weight k times the row k
  ;; further on, for k < counts[y], the partial sum rounded to float32 after
  ;; each row as the TypeScript rounds it.
  (func (export "resizeColumns")
    (param $tmp i32) (param $rowLen i32) (param $outH i32) (param $starts i32)
    (param $counts i32) (param $weights i32) (param $taps i32) (param $out i32)
    (local $y i32) (local $i i32) (local $k i32) (local $n i32)
    (local $a i32) (local $w i32) (local $o i32) (local $rowBytes i32)
    (local $acc v128)
    (local.set $rowBytes (i32.shl (local.get $rowLen) (i32.const 2)))
    (local.set $y (i32.const 0))
    (block $done (loop $rows
      (br_if $done (i32.ge_u (local.get $y) (local.get $outH)))
      (local.set $n (i32.load (i32.add (local.get $counts)
        (i32.shl (local.get $y) (i32.const 2)))))
      (local.set $a (i32.add (local.get $tmp) (i32.mul (local.get $rowBytes)
        (i32.load (i32.add (local.get $starts) (i32.shl (local.get $y) (i32.const 2)))))))
      (local.set $w (i32.add (local.get $weights) (i32.shl
        (i32.mul (local.get $y) (local.get $taps)) (i32.const 2))))
      (local.set $o (i32.add (local.get $out) (i32.mul (local.get $y) (local.get $rowBytes))))
      (local.set $i (i32.const 0))
      (block $rowDone (loop $pairs
        (br_if $rowDone (i32.ge_u (local.get $i) (local.get $rowBytes)))
        (local.set $acc (f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.mul
          (f64x2.splat (f64.promote_f32 (f32.load (local.get $w))))
          (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $a) (local.get $i))))))))
        (local.set $k (i32.const 1))
        (block $tapsDone (loop $taps
          (br_if $tapsDone (i32.ge_u (local.get $k) (local.get $n)))
          (local.set $acc (f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero (f64x2.add (local.get $acc) (f64x2.mul
            (f64x2.splat (f64.promote_f32 (f32.load (i32.add (local.get $w)
              (i32.shl (local.get $k) (i32.const 2))))))
            (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (i32.add (local.get $a) (local.get $i))
              (i32.mul (local.get $k) (local.get $rowBytes))))))))))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br $taps)))
        (v128.store64_lane 0 (i32.add (local.get $o) (local.get $i)) (f32x4.demote_f64x2_zero (local.get $acc)))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $pairs)))
      (local.set $y (i32.add (local.get $y) (i32.const 1)))
      (br $rows))))

  ;; Copies the first and last pixel (3 floats) of the row at $row into the
  ;; $reach pixels before and after it, as clamping an index would read.
  (func $padRow (param $row i32) (param $rowLen i32) (param $reach i32)
    (local $j i32) (local $last i32)
    (local.set $last (i32.add (local.get $row)
      (i32.shl (i32.sub (local.get $rowLen) (i32.const 3)) (i32.const 2))))
    (local.set $j (i32.const 1))
    (block $done (loop $pad
      (br_if $done (i32.gt_u (local.get $j) (local.get $reach)))
      (memory.copy (i32.sub (local.get $row) (i32.mul (local.get $j) (i32.const 12)))
        (local.get $row) (i32.const 12))
      (memory.copy (i32.add (local.get $last) (i32.mul (local.get $j) (i32.const 12)))
        (local.get $last) (i32.const 12))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $pad))))

  ;; One extended-box pass along a padded row, $rowLen floats from $in to
  ;; $out: boxRow's inner * c + edge * (l + r) (radius 0) or inner * (c +
  ;; (l1 + r1)) + edge * (l2 + r2) (radius 1), neighbours 3 floats apart.
  (func $boxPass (param $in i32) (param $out i32) (param $rowLen i32)
    (param $r i32) (param $inner v128) (param $edge v128)
    (local $e i32) (local $end i32) (local $p i32)
    (local.set $end (i32.add (local.get $in) (i32.shl (local.get $rowLen) (i32.const 2))))
    (local.set $p (local.get $in))
    (local.set $e (local.get $out))
    (if (i32.eqz (local.get $r))
      (then
        (block $done (loop $pairs
          (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
          (v128.store64_lane 0 (local.get $e) (f32x4.demote_f64x2_zero (f64x2.add
            (f64x2.mul (local.get $inner) (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $p))))
            (f64x2.mul (local.get $edge) (f64x2.add
              (f64x2.promote_low_f32x4 (v128.load64_zero (i32.sub (local.get $p) (i32.const 12))))
              (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $p) (i32.const 12)))))))))
          (local.set $p (i32.add (local.get $p) (i32.const 8)))
          (local.set $e (i32.add (local.get $e) (i32.const 8)))
          (br $pairs))))
      (else
        (block $done (loop $pairs
          (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
          (v128.store64_lane 0 (local.get $e) (f32x4.demote_f64x2_zero (f64x2.add
            (f64x2.mul (local.get $inner) (f64x2.add
              (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $p)))
              (f64x2.add
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.sub (local.get $p) (i32.const 12))))
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $p) (i32.const 12)))))))
            (f64x2.mul (local.get $edge) (f64x2.add
              (f64x2.promote_low_f32x4 (v128.load64_zero (i32.sub (local.get $p) (i32.const 24))))
              (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $p) (i32.const 24)))))))))
          (local.set $p (i32.add (local.get $p) (i32.const 8)))
          (local.set $e (i32.add (local.get $e) (i32.const 8)))
          (br $pairs))))))

  ;; gaussianBlur's three horizontal passes (radius 0 or 1) over each row
  ;; of the $width x $height RGB image at $img, in place, through the
  ;; padded row buffers $bufA and $bufB (each $reach pixels of room before
  ;; the row and after it, plus two floats).
  (func (export "blurRows")
    (param $img i32) (param $width i32) (param $height i32) (param $r i32)
    (param $innerF f64) (param $edgeF f64) (param $bufA i32) (param $bufB i32)
    (local $y i32) (local $rowLen i32) (local $rowBytes i32) (local $row i32)
    (local $reach i32) (local $inner v128) (local $edge v128)
    (local.set $inner (f64x2.splat (local.get $innerF)))
    (local.set $edge (f64x2.splat (local.get $edgeF)))
    (local.set $reach (i32.add (local.get $r) (i32.const 1)))
    (local.set $rowLen (i32.mul (local.get $width) (i32.const 3)))
    (local.set $rowBytes (i32.shl (local.get $rowLen) (i32.const 2)))
    (local.set $y (i32.const 0))
    (block $done (loop $rows
      (br_if $done (i32.ge_u (local.get $y) (local.get $height)))
      (local.set $row (i32.add (local.get $img) (i32.mul (local.get $y) (local.get $rowBytes))))
      (memory.copy (local.get $bufA) (local.get $row) (local.get $rowBytes))
      (call $padRow (local.get $bufA) (local.get $rowLen) (local.get $reach))
      (call $boxPass (local.get $bufA) (local.get $bufB) (local.get $rowLen)
        (local.get $r) (local.get $inner) (local.get $edge))
      (call $padRow (local.get $bufB) (local.get $rowLen) (local.get $reach))
      (call $boxPass (local.get $bufB) (local.get $bufA) (local.get $rowLen)
        (local.get $r) (local.get $inner) (local.get $edge))
      (call $padRow (local.get $bufA) (local.get $rowLen) (local.get $reach))
      (call $boxPass (local.get $bufA) (local.get $bufB) (local.get $rowLen)
        (local.get $r) (local.get $inner) (local.get $edge))
      (memory.copy (local.get $row) (local.get $bufB) (local.get $rowBytes))
      (local.set $y (i32.add (local.get $y) (i32.const 1)))
      (br $rows))))

  ;; Row $j clamped to 0..$height-1, as a byte address in the image at $img.
  (func $rowAt (param $img i32) (param $j i32) (param $height i32)
    (param $rowBytes i32) (result i32)
    (i32.add (local.get $img) (i32.mul (local.get $rowBytes)
      (select (i32.const 0)
        (select (i32.sub (local.get $height) (i32.const 1)) (local.get $j)
          (i32.ge_s (local.get $j) (local.get $height)))
        (i32.lt_s (local.get $j) (i32.const 0))))))

  ;; One of gaussianBlur's vertical passes (boxColumnRow, radius 0 or 1)
  ;; from the image at $src to the one at $dst, rows clamped.
  (func (export "blurColumns")
    (param $src i32) (param $dst i32) (param $width i32) (param $height i32)
    (param $r i32) (param $innerF f64) (param $edgeF f64)
    (local $y i32) (local $rowBytes i32) (local $i i32) (local $o i32)
    (local $c i32) (local $u i32) (local $d i32) (local $a i32) (local $b i32)
    (local $reach i32) (local $inner v128) (local $edge v128)
    (local.set $inner (f64x2.splat (local.get $innerF)))
    (local.set $edge (f64x2.splat (local.get $edgeF)))
    (local.set $reach (i32.add (local.get $r) (i32.const 1)))
    (local.set $rowBytes (i32.mul (local.get $width) (i32.const 12)))
    (local.set $y (i32.const 0))
    (block $done (loop $rows
      (br_if $done (i32.ge_u (local.get $y) (local.get $height)))
      (local.set $o (i32.add (local.get $dst) (i32.mul (local.get $y) (local.get $rowBytes))))
      (local.set $c (call $rowAt (local.get $src) (local.get $y) (local.get $height) (local.get $rowBytes)))
      (local.set $u (call $rowAt (local.get $src) (i32.sub (local.get $y) (i32.const 1)) (local.get $height) (local.get $rowBytes)))
      (local.set $d (call $rowAt (local.get $src) (i32.add (local.get $y) (i32.const 1)) (local.get $height) (local.get $rowBytes)))
      (local.set $a (call $rowAt (local.get $src) (i32.sub (local.get $y) (local.get $reach)) (local.get $height) (local.get $rowBytes)))
      (local.set $b (call $rowAt (local.get $src) (i32.add (local.get $y) (local.get $reach)) (local.get $height) (local.get $rowBytes)))
      (local.set $i (i32.const 0))
      (if (i32.eqz (local.get $r))
        (then
          (block $rowDone (loop $pairs
            (br_if $rowDone (i32.ge_u (local.get $i) (local.get $rowBytes)))
            (v128.store64_lane 0 (i32.add (local.get $o) (local.get $i)) (f32x4.demote_f64x2_zero (f64x2.add
              (f64x2.mul (local.get $inner) (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $c) (local.get $i)))))
              (f64x2.mul (local.get $edge) (f64x2.add
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $a) (local.get $i))))
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $b) (local.get $i)))))))))
            (local.set $i (i32.add (local.get $i) (i32.const 8)))
            (br $pairs))))
        (else
          (block $rowDone (loop $pairs
            (br_if $rowDone (i32.ge_u (local.get $i) (local.get $rowBytes)))
            (v128.store64_lane 0 (i32.add (local.get $o) (local.get $i)) (f32x4.demote_f64x2_zero (f64x2.add
              (f64x2.mul (local.get $inner) (f64x2.add
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $c) (local.get $i))))
                (f64x2.add
                  (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $u) (local.get $i))))
                  (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $d) (local.get $i)))))))
              (f64x2.mul (local.get $edge) (f64x2.add
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $a) (local.get $i))))
                (f64x2.promote_low_f32x4 (v128.load64_zero (i32.add (local.get $b) (local.get $i)))))))))
            (local.set $i (i32.add (local.get $i) (i32.const 8)))
            (br $pairs)))))
      (local.set $y (i32.add (local.get $y) (i32.const 1)))
      (br $rows))))

  ;; toTensor: the $plane RGB pixels at $src to three planes at $out, each
  ;; value v as (v >= $t ? 255 - v : v) * scale + shift of its channel.
  (func (export "toTensor")
    (param $src i32) (param $plane i32) (param $out i32)
    (param $s0 f64) (param $s1 f64) (param $s2 f64)
    (param $h0 f64) (param $h1 f64) (param $h2 f64) (param $t f64)
    (local $p i32) (local $in i32) (local $o i32) (local $planeBytes i32)
    (local $v f64)
    (local.set $planeBytes (i32.shl (local.get $plane) (i32.const 2)))
    (local.set $in (local.get $src))
    (local.set $o (local.get $out))
    (local.set $p (i32.const 0))
    (block $done (loop $pixels
      (br_if $done (i32.ge_u (local.get $p) (local.get $plane)))
      (local.set $v (f64.promote_f32 (f32.load (local.get $in))))
      (f32.store (local.get $o) (f32.demote_f64 (f64.add (f64.mul
        (select (f64.sub (f64.const 255) (local.get $v)) (local.get $v)
          (f64.ge (local.get $v) (local.get $t)))
        (local.get $s0)) (local.get $h0))))
      (local.set $v (f64.promote_f32 (f32.load offset=4 (local.get $in))))
      (f32.store (i32.add (local.get $o) (local.get $planeBytes))
        (f32.demote_f64 (f64.add (f64.mul
          (select (f64.sub (f64.const 255) (local.get $v)) (local.get $v)
            (f64.ge (local.get $v) (local.get $t)))
          (local.get $s1)) (local.get $h1))))
      (local.set $v (f64.promote_f32 (f32.load offset=8 (local.get $in))))
      (f32.store (i32.add (local.get $o) (i32.shl (local.get $planeBytes) (i32.const 1)))
        (f32.demote_f64 (f64.add (f64.mul
          (select (f64.sub (f64.const 255) (local.get $v)) (local.get $v)
            (f64.ge (local.get $v) (local.get $t)))
          (local.get $s2)) (local.get $h2))))
      (local.set $in (i32.add (local.get $in) (i32.const 12)))
      (local.set $o (i32.add (local.get $o) (i32.const 4)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $pixels))))

  ;; adjustBrightness: each of the $n floats at $img to clamp255(v * $f),
  ;; two at a time (the buffer has room for a last odd one's neighbour).
  (func (export "brightness") (param $img i32) (param $n i32) (param $f f64)
    (local $p i32) (local $end i32) (local $fv v128) (local $v v128)
    (local.set $fv (f64x2.splat (local.get $f)))
    (local.set $p (local.get $img))
    (local.set $end (i32.add (local.get $img) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $values
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $v (f64x2.mul
        (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $p))) (local.get $fv)))
      (v128.store64_lane 0 (local.get $p) (f32x4.demote_f64x2_zero
        (v128.bitselect (f64x2.splat (f64.const 0))
        (v128.bitselect (f64x2.splat (f64.const 255)) (local.get $v)
          (f64x2.gt (local.get $v) (f64x2.splat (f64.const 255))))
        (f64x2.lt (local.get $v) (f64x2.splat (f64.const 0))))))
      (local.set $p (i32.add (local.get $p) (i32.const 8)))
      (br $values))))

  ;; adjustContrast's blend: each value to clamp255($offset + $f * v).
  (func (export "contrast") (param $img i32) (param $n i32) (param $offset f64)
    (param $f f64)
    (local $p i32) (local $end i32) (local $fv v128) (local $ov v128) (local $v v128)
    (local.set $fv (f64x2.splat (local.get $f)))
    (local.set $ov (f64x2.splat (local.get $offset)))
    (local.set $p (local.get $img))
    (local.set $end (i32.add (local.get $img) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $values
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $v (f64x2.add (local.get $ov) (f64x2.mul (local.get $fv)
        (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $p))))))
      (v128.store64_lane 0 (local.get $p) (f32x4.demote_f64x2_zero
        (v128.bitselect (f64x2.splat (f64.const 0))
        (v128.bitselect (f64x2.splat (f64.const 255)) (local.get $v)
          (f64x2.gt (local.get $v) (f64x2.splat (f64.const 255))))
        (f64x2.lt (local.get $v) (f64x2.splat (f64.const 0))))))
      (local.set $p (i32.add (local.get $p) (i32.const 8)))
      (br $values))))

  ;; meanLuma: the mean luma of the $pixels pixels at $img, rounded as
  ;; PIL's ImageEnhance.Contrast rounds it.
  (func (export "meanLuma") (param $img i32) (param $pixels i32) (result f64)
    (local $p i32) (local $end i32) (local $sum f64)
    (local.set $p (local.get $img))
    (local.set $end (i32.add (local.get $img) (i32.mul (local.get $pixels) (i32.const 12))))
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $sum (f64.add (local.get $sum) (f64.add (f64.add
        (f64.mul (f64.const 0.299) (f64.promote_f32 (f32.load (local.get $p))))
        (f64.mul (f64.const 0.587) (f64.promote_f32 (f32.load offset=4 (local.get $p)))))
        (f64.mul (f64.const 0.114) (f64.promote_f32 (f32.load offset=8 (local.get $p)))))))
      (local.set $p (i32.add (local.get $p) (i32.const 12)))
      (br $each)))
    (f64.floor (f64.add
      (f64.div (local.get $sum) (f64.convert_i32_u (local.get $pixels)))
      (f64.const 0.5))))
)
