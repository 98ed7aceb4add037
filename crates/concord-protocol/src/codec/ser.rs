//! A serializer wrapper that bounds nesting depth the way [`super::de::Limited`] does, so
//! that the encoder refuses to produce a frame the decoder would refuse.

use std::fmt;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

use super::{Fault, Guard};

fn descend<E: ser::Error>(budget: usize, guard: &Guard) -> Result<usize, E> {
    match budget.checked_sub(1) {
        Some(left) => Ok(left),
        None => {
            guard.trip(Fault::TooDeep);
            Err(E::custom("nesting too deep"))
        }
    }
}

/// Serializes `value` through [`Checked`] with the whole depth budget.
pub(super) struct Root<'a, 'g, T: ?Sized> {
    pub(super) value: &'a T,
    pub(super) budget: usize,
    pub(super) guard: &'g Guard,
}

impl<T: ?Sized + Serialize> Serialize for Root<'_, '_, T> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Checked { ser, budget: self.budget, guard: self.guard })
    }
}

/// One component of a container, one level down.
struct Child<'a, 'g, T: ?Sized> {
    value: &'a T,
    budget: usize,
    guard: &'g Guard,
}

impl<T: ?Sized + Serialize> Serialize for Child<'_, '_, T> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let budget = descend(self.budget, self.guard)?;
        self.value.serialize(Checked { ser, budget, guard: self.guard })
    }
}

struct Checked<'g, S> {
    ser: S,
    budget: usize,
    guard: &'g Guard,
}

impl<'g, S> Checked<'g, S> {
    fn child<'a, T: ?Sized>(&self, value: &'a T) -> Child<'a, 'g, T> {
        Child { value, budget: self.budget, guard: self.guard }
    }
}

macro_rules! forward_serialize {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
                self.ser.$method(v)
            }
        )*
    };
}

impl<'g, S: Serializer> Serializer for Checked<'g, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'g, S::SerializeSeq>;
    type SerializeTuple = Compound<'g, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'g, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'g, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'g, S::SerializeMap>;
    type SerializeStruct = Compound<'g, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'g, S::SerializeStructVariant>;

    forward_serialize!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.ser.serialize_none()
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.ser.serialize_unit()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<S::Ok, S::Error> {
        let child = self.child(value);
        self.ser.serialize_some(&child)
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.ser.serialize_unit_variant(name, index, variant)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let child = self.child(value);
        self.ser.serialize_newtype_struct(name, &child)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let child = self.child(value);
        self.ser.serialize_newtype_variant(name, index, variant, &child)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        let inner = self.ser.serialize_seq(len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        let inner = self.ser.serialize_tuple(len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let inner = self.ser.serialize_tuple_struct(name, len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        let inner = self.ser.serialize_tuple_variant(name, index, variant, len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        let inner = self.ser.serialize_map(len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        let inner = self.ser.serialize_struct(name, len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let inner = self.ser.serialize_struct_variant(name, index, variant, len)?;
        Ok(Compound { inner, budget: self.budget, guard: self.guard })
    }

    fn collect_str<T: ?Sized + fmt::Display>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.ser.collect_str(value)
    }

    fn is_human_readable(&self) -> bool {
        self.ser.is_human_readable()
    }
}

/// A container being serialized; each component goes one level down.
struct Compound<'g, C> {
    inner: C,
    budget: usize,
    guard: &'g Guard,
}

impl<'g, C> Compound<'g, C> {
    fn child<'a, T: ?Sized>(&self, value: &'a T) -> Child<'a, 'g, T> {
        Child { value, budget: self.budget, guard: self.guard }
    }
}

impl<C: SerializeSeq> SerializeSeq for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_element(&child)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeTuple> SerializeTuple for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_element(&child)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeTupleStruct> SerializeTupleStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_field(&child)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeTupleVariant> SerializeTupleVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_field(&child)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeMap> SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), C::Error> {
        let child = self.child(key);
        self.inner.serialize_key(&child)
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_value(&child)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeStruct> SerializeStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_field(key, &child)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeStructVariant> SerializeStructVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let child = self.child(value);
        self.inner.serialize_field(key, &child)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}
